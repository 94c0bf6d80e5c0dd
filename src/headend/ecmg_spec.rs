//! One `--ecmg` value of `castmux scramble`: `HOST:PORT[,HOST2:PORT2...][?key=value&...]`,
//! one CAS: its primary ECMG, then its backups.
//!
//! The query keys set what differs between the ECMGs of a SimulCrypt service (one per
//! CAS); whatever a value leaves out comes from the shared options (`--super-cas-id`,
//! `--channel-id`, ...). Keys: `super_cas_id`, `channel_id`, `stream_id`, `ecm_id`,
//! `access_criteria`, `version`, `ecm_pid`, `private_data`.

use crate::ts::Pid;

use crate::value as args;

/// What one `--ecmg` value says; `None` means "take the shared option".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcmgSpec {
    /// `HOST:PORT` of the ECMG (the primary).
    pub addr: String,
    /// Backup ECMGs of the same CAS, in the order they are tried.
    pub backup: Vec<String>,
    pub super_cas_id: Option<u32>,
    pub channel_id: Option<u16>,
    pub stream_id: Option<u16>,
    pub ecm_id: Option<u16>,
    /// The hex digits as given (sent as bytes, like Astra's "ACCESS CRITERIA (HEX)").
    pub access_criteria: Option<String>,
    pub version: Option<u8>,
    pub ecm_pid: Option<Pid>,
    /// private_data_byte values of this CAS's CA_descriptor.
    pub private_data: Option<Vec<u8>>,
}

const KEYS: &str = "super_cas_id, channel_id, stream_id, ecm_id, access_criteria, version, \
                    ecm_pid, private_data";

impl std::str::FromStr for EcmgSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, query) = match s.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (s, None),
        };
        let mut addrs = Vec::new();
        for addr in addr.split(',').map(str::trim) {
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(format!("'{addr}' is not HOST:PORT (e.g. 10.0.0.5:43000)")),
            }
            if addrs.contains(&addr) {
                return Err(format!("'{addr}' is listed twice"));
            }
            addrs.push(addr);
        }
        let mut spec = EcmgSpec {
            addr: addrs[0].to_owned(),
            backup: addrs[1..].iter().map(|a| (*a).to_owned()).collect(),
            ..EcmgSpec::default()
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}' is not key=value (keys: {KEYS})"))?;
            let bad = |e: String| format!("{key}={value}: {e}");
            match key {
                "super_cas_id" => spec.super_cas_id = Some(args::hex_u32(value).map_err(bad)?),
                "channel_id" => spec.channel_id = Some(args::u16_number(value).map_err(bad)?),
                "stream_id" => spec.stream_id = Some(args::u16_number(value).map_err(bad)?),
                "ecm_id" => spec.ecm_id = Some(args::u16_number(value).map_err(bad)?),
                "access_criteria" => spec.access_criteria = Some(value.to_owned()),
                "version" => match value {
                    "2" => spec.version = Some(2),
                    "3" => spec.version = Some(3),
                    _ => return Err(bad("the ECMG<->SCS version is 2 or 3".to_owned())),
                },
                "ecm_pid" => spec.ecm_pid = Some(args::pid(value).map_err(bad)?),
                "private_data" => spec.private_data = Some(hex_bytes(value).map_err(bad)?),
                _ => return Err(format!("unknown key '{key}' (keys: {KEYS})")),
            }
        }
        Ok(spec)
    }
}

/// Bytes from hex digits (an even count, at most 200 bytes: a CA_descriptor's room).
fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let t = args::hex_digits(s);
    if !t.len().is_multiple_of(2) || t.len() > 400 {
        return Err("expected an even number of hex digits, at most 200 bytes".to_owned());
    }
    // by bytes, not str slices: a non-ASCII character must be an error, not a panic
    t.as_bytes()
        .chunks_exact(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("'{t}' is not hex digits"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address() {
        let s: EcmgSpec = "127.0.0.1:43000".parse().unwrap();
        assert_eq!(s.addr, "127.0.0.1:43000");
        assert_eq!(s.super_cas_id, None);
    }

    #[test]
    fn primary_and_backups() {
        let s: EcmgSpec = "10.0.0.5:43000, 10.0.0.6:43000,cas3:43001?super_cas_id=4AE10000"
            .parse()
            .unwrap();
        assert_eq!(s.addr, "10.0.0.5:43000");
        assert_eq!(s.backup, ["10.0.0.6:43000", "cas3:43001"]);
        assert_eq!(s.super_cas_id, Some(0x4AE1_0000));
        let e = "a:1,a:1".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = "a:1,b".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("'b' is not HOST:PORT"), "{e}");
    }

    #[test]
    fn every_key() {
        let s: EcmgSpec = "cas.example:43001?super_cas_id=0B000001&channel_id=2&stream_id=3\
                           &ecm_id=4&access_criteria=00000011&version=2&ecm_pid=0x1FF2&private_data=0102"
            .parse()
            .unwrap();
        assert_eq!(s.addr, "cas.example:43001");
        assert_eq!(s.super_cas_id, Some(0x0B00_0001));
        assert_eq!(
            (s.channel_id, s.stream_id, s.ecm_id),
            (Some(2), Some(3), Some(4))
        );
        assert_eq!(s.access_criteria.as_deref(), Some("00000011"));
        assert_eq!(s.version, Some(2));
        assert_eq!(s.ecm_pid, Some(Pid::new(0x1FF2)));
        assert_eq!(s.private_data, Some(vec![1, 2]));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = "nohost".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = "h:1?colour=red".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("unknown key 'colour'"), "{e}");
        let e = "h:1?version=4".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("version=4"), "{e}");
        let e = "h:1?private_data=123".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("even number"), "{e}");
        // 'é' is two bytes: a slice at byte 2 would fall inside it
        let e = "h:1?private_data=a\u{e9}b".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("not hex digits"), "{e}");
        let e = "h:1?ecm_pid".parse::<EcmgSpec>().unwrap_err();
        assert!(e.contains("key=value"), "{e}");
    }
}
