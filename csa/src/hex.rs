//! Minimal hex helpers for CWs and keys.

pub(crate) fn decode_into(text: &str, out: &mut [u8]) -> Result<(), ()> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut digits = t
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-');
    for byte in out.iter_mut() {
        let hi = digits.next().and_then(|c| c.to_digit(16)).ok_or(())?;
        let lo = digits.next().and_then(|c| c.to_digit(16)).ok_or(())?;
        *byte = (hi << 4 | lo) as u8;
    }
    if digits.next().is_some() {
        return Err(());
    }
    Ok(())
}

pub(crate) fn encode_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}
