//! The built-in CAS end to end in the library: scrambler + built-in ECMG (+ EMM carousel)
//! -> card player with a software card. An entitled card gives back every ES packet byte
//! for byte; a card without the package, an expired card and a disabled card descramble
//! nothing and say why; a card with no keys learns them from its EMM.

use std::collections::BTreeSet;
use std::time::Duration;

use castmux::cas::{derive_card_key, derive_group_key};
use castmux::cas::{
    AccessCriteria, BuiltinEcmg, CardFile, CardSerial, EmmCarousel, Entitlements, GroupId, Key128,
    PackageBit, ServiceKey, ServiceKeyRing, CARD_FILE_FORMAT,
};
use castmux::scramble::{
    CaSystem, Cw, EcmError, EcmGenerator, EcmRequest, KeyMode, ScrambleConfig, Scrambler,
};
use castmux::softcard::player::{CardPlayer, LocalCard};
use castmux::softcard::{CwReduction, SoftCard};
use castmux::ts::{Packet, Pid};

const CAID: u16 = castmux::scramble::config::DEFAULT_CA_SYSTEM_ID;
const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sample() -> Vec<Packet> {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/spts.ts")).unwrap();
    bytes
        .chunks_exact(188)
        .map(|c| c.try_into().unwrap())
        .collect()
}

fn service_keys() -> Vec<ServiceKey> {
    let bit = PackageBit::new(0).unwrap();
    vec![
        ServiceKey {
            bit,
            version: 1,
            key: Key128::random(),
        },
        ServiceKey {
            bit,
            version: 2,
            key: Key128::random(),
        },
    ]
}

fn entitlements(access: u64, start: i64, finish: i64, enabled: bool) -> Entitlements {
    Entitlements {
        access: AccessCriteria(access),
        start,
        finish,
        pair: 0,
        enabled,
        events: vec![],
    }
}

/// Scramble the sample with 1 s periods, the built-in ECMG for package 0, and (optionally)
/// the EMM carousel with `emm_cards` on PID 0x1FF1.
fn scramble(keys: &[ServiceKey], emm_cards: &[(CardSerial, Key128, Entitlements)]) -> Vec<Packet> {
    let ring = ServiceKeyRing::from_keys(keys.iter().cloned()).shared();
    scramble_with(
        Box::new(BuiltinEcmg::new(ring, AccessCriteria(1), CAID)),
        keys,
        emm_cards,
    )
}

fn scramble_with(
    ecmg: Box<dyn EcmGenerator>,
    keys: &[ServiceKey],
    emm_cards: &[(CardSerial, Key128, Entitlements)],
) -> Vec<Packet> {
    let mut carousel = EmmCarousel::new(200_000);
    carousel.set_service_keys(keys.to_vec());
    for (serial, key, ent) in emm_cards {
        carousel.upsert_card(*serial, key.clone(), ent.clone(), true);
    }
    scramble_carousel(ecmg, carousel)
}

/// Scramble the sample as [`scramble_with`] does, with `carousel` on the EMM PID.
fn scramble_carousel(ecmg: Box<dyn EcmGenerator>, carousel: EmmCarousel) -> Vec<Packet> {
    let config = ScrambleConfig {
        keys: KeyMode::Rotating,
        crypto_period: Duration::from_secs(1),
        ca_systems: vec![CaSystem::new(CAID, Pid::new(0x1FF0))],
        emm_pid: Some(Pid::new(0x1FF1)),
        emm_ca_system_id: CAID,
        ..ScrambleConfig::default()
    };
    let mut s = Scrambler::new(config, None, vec![ecmg]).unwrap();
    s.set_emm_source(Box::new(carousel)).unwrap();
    let mut out = Vec::new();
    for batch in sample().chunks(256) {
        let bytes = s.process(batch).unwrap();
        out.extend(
            bytes
                .chunks_exact(188)
                .map(|c| -> Packet { c.try_into().unwrap() }),
        );
    }
    out
}

fn card(serial: u64, ent: Entitlements, keys: Vec<ServiceKey>) -> SoftCard {
    let root = Key128::from_bytes([9; 16]);
    SoftCard::from_card_file(CardFile {
        format: CARD_FILE_FORMAT,
        serial: CardSerial(serial),
        ca_system_id: CAID,
        card_key: derive_card_key(&root, CardSerial(serial)),
        entitlements: ent,
        service_keys: keys,
        issued_at: now(),
    })
    .unwrap()
}

fn play(
    card: SoftCard,
    scrambled: &[Packet],
) -> (Vec<Packet>, castmux::softcard::player::PlayerCounters) {
    play_reduced(card, scrambled, CwReduction::Reduce)
}

fn play_reduced(
    mut card: SoftCard,
    scrambled: &[Packet],
    reduction: CwReduction,
) -> (Vec<Packet>, castmux::softcard::player::PlayerCounters) {
    card.set_cw_reduction(reduction);
    let mut p = CardPlayer::new(
        csa::Algorithm::Csa2,
        CAID,
        Box::new(LocalCard::new(card, None)),
    )
    .unwrap();
    p.set_cw_reduction(reduction);
    let mut out = scrambled.to_vec();
    for batch in out.chunks_mut(256) {
        p.process(batch).unwrap();
    }
    (out, p.counters().clone())
}

fn es(pkts: &[Packet]) -> Vec<Packet> {
    let pids = BTreeSet::from([0x100u16, 0x101]);
    pkts.iter()
        .filter(|p| pids.contains(&(u16::from_be_bytes([p[1], p[2]]) & 0x1FFF)))
        .copied()
        .collect()
}

fn scrambled_es_count(pkts: &[Packet]) -> usize {
    es(pkts).iter().filter(|p| p[3] >> 6 != 0).count()
}

/// From the first ES packet the card opened on, every ES packet is clear and the sample's.
fn assert_clear_from_the_first_answer(clear: &[Packet]) {
    let got = es(clear);
    let want = es(&sample());
    let first_clear = got.iter().position(|p| p[3] >> 6 == 0).unwrap();
    assert!(
        got[first_clear..] == want[first_clear..],
        "descrambled ES differs"
    );
    assert_eq!(scrambled_es_count(&got[first_clear..]), 0);
}

#[test]
fn entitled_card_descrambles_every_es_packet() {
    let keys = service_keys();
    let scrambled = scramble(&keys, &[]);
    assert!(scrambled_es_count(&scrambled) > 1000);
    let a = card(
        2100000000,
        entitlements(1, now() - DAY, now() + DAY, true),
        keys,
    );
    let (clear, c) = play(a, &scrambled);
    assert_eq!(c.ecm_pid, Some(0x1FF0));
    assert!(c.parity_flips >= 2, "{c:?}");
    assert_eq!(c.no_key, 0, "{c:?}");
    assert_eq!(c.refusals, 0, "{c:?}");
    assert!(es(&clear) == es(&sample()), "descrambled ES differs");
}

#[test]
fn cards_without_rights_descramble_nothing_and_say_why() {
    let keys = service_keys();
    let scrambled = scramble(&keys, &[]);
    let n = scrambled_es_count(&scrambled);
    let cases = [
        (
            "not entitled",
            entitlements(0b10, now() - DAY, now() + DAY, true),
        ),
        (
            "expired",
            entitlements(1, now() - 2 * DAY, now() - DAY, true),
        ),
        (
            "not yet valid",
            entitlements(1, now() + DAY, now() + 2 * DAY, true),
        ),
        ("disabled", entitlements(1, now() - DAY, now() + DAY, false)),
    ];
    for (why, ent) in cases {
        let (out, c) = play(card(2100000001, ent, keys.clone()), &scrambled);
        assert_eq!(c.descrambled, 0, "{why}: {c:?}");
        assert_eq!(
            scrambled_es_count(&out),
            n,
            "{why}: every ES packet still scrambled"
        );
        assert!(c.refusals > 0, "{why}: {c:?}");
        let said = c.last_refusal.unwrap_or_default().to_lowercase();
        assert!(
            said.contains(why.split(' ').next().unwrap()),
            "{why}: {said}"
        );
    }
}

#[test]
fn a_card_with_no_keys_learns_them_from_its_emm() {
    let keys = service_keys();
    let serial = CardSerial(2100000005);
    let root = Key128::from_bytes([9; 16]);
    let ent = entitlements(1, now() - DAY, now() + DAY, true);
    let scrambled = scramble(
        &keys,
        &[(serial, derive_card_key(&root, serial), ent.clone())],
    );
    let (clear, c) = play(card(serial.0, ent, vec![]), &scrambled);
    assert!(c.emm_pid == Some(0x1FF1) && c.emms > 0, "{c:?}");
    assert!(
        c.descrambled > 0,
        "the card opened ECMs after its EMM: {c:?}"
    );
    // after the first answer every packet is clear and right
    assert_clear_from_the_first_answer(&clear);
}

#[test]
fn a_card_with_no_keys_learns_them_from_its_group_emm() {
    // the head-end's layout: the card's unique EMM (format 2) gives it its entitlements
    // and group key, its group's EMM the keys; packed several to a TS packet on the PID
    let keys = service_keys();
    let root = Key128::from_bytes([9; 16]);
    let serial = CardSerial(2100000005);
    let ent = entitlements(1, now() - DAY, now() + DAY, true);
    let mut carousel = EmmCarousel::grouped(200_000, CAID);
    carousel.set_service_keys(keys.clone());
    // the card and 299 others around it, in two groups
    for s in (serial.0 - 150)..(serial.0 + 150) {
        let s = CardSerial(s);
        let g = GroupId::of(s);
        carousel.set_group_key(g, derive_group_key(&root, g));
        let e = if s == serial {
            ent.clone()
        } else {
            entitlements(0b10, now() - DAY, now() + DAY, true)
        };
        carousel.upsert_card(s, derive_card_key(&root, s), e, s == serial);
    }
    let ring = ServiceKeyRing::from_keys(keys.iter().cloned()).shared();
    let scrambled = scramble_carousel(
        Box::new(BuiltinEcmg::new(ring, AccessCriteria(1), CAID)),
        carousel,
    );
    // more EMM sections than EMM packets: they are packed
    let emm_packets = scrambled
        .iter()
        .filter(|p| (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == 0x1FF1)
        .count();
    let (clear, c) = play(card(serial.0, ent.clone(), vec![]), &scrambled);
    assert!(c.emm_pid == Some(0x1FF1), "{c:?}");
    assert!(
        c.emms > emm_packets as u64 * 2,
        "{} sections in {emm_packets} packets",
        c.emms
    );
    assert!(
        c.descrambled > 0,
        "the card opened ECMs after its EMMs: {c:?}"
    );
    assert_clear_from_the_first_answer(&clear);

    // a card of the same group that is not entitled to package 0 learns no key of it
    let other = CardSerial(serial.0 + 1);
    let (_, c) = play(
        card(
            other.0,
            entitlements(0b10, now() - DAY, now() + DAY, true),
            vec![],
        ),
        &scrambled,
    );
    assert_eq!(c.descrambled, 0, "{c:?}");
}

/// TSDuck's scrambler by default: the ECMG gets the full 64-bit CW, the packets are
/// scrambled with its reduced form (bytes 3 and 7 = checksums). Here the scrambler's CWs
/// (which have their checksums) go to the built-in ECMG with bytes 3 and 7 changed, so the
/// ECMs carry a full CW whose reduction is the key in use.
struct FullCwEcmg(BuiltinEcmg);

impl EcmGenerator for FullCwEcmg {
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        let unreduce = |cw: &Cw| {
            let mut b = cw.as_bytes().to_vec();
            b[3] ^= 0x5A;
            b[7] ^= 0xA5;
            Cw::from_slice(&b).unwrap()
        };
        let (current, next) = (unreduce(req.current), unreduce(req.next));
        self.0.generate(
            &EcmRequest {
                current: &current,
                next: &next,
                ..*req
            },
            out,
        )
    }
}

#[test]
fn full_cws_in_the_ecm_descramble_as_a_cam_would_and_full_keys_stay_an_option() {
    let keys = service_keys();
    let ring = ServiceKeyRing::from_keys(keys.iter().cloned()).shared();
    let ecmg = FullCwEcmg(BuiltinEcmg::new(ring, AccessCriteria(1), CAID));
    let scrambled = scramble_with(Box::new(ecmg), &keys, &[]);
    let ent = entitlements(1, now() - DAY, now() + DAY, true);
    let (clear, c) = play(card(2100000007, ent.clone(), keys.clone()), &scrambled);
    assert_eq!((c.no_key, c.refusals), (0, 0), "{c:?}");
    assert!(es(&clear) == es(&sample()), "reduced CWs: ES differs");
    // full 64-bit keys are not what this stream was scrambled with: nothing comes out right
    let (wrong, c) = play_reduced(card(2100000007, ent, keys), &scrambled, CwReduction::Full);
    assert!(c.descrambled > 1000, "{c:?}");
    let want = es(&sample());
    let same = es(&wrong)
        .iter()
        .zip(&want)
        .filter(|(g, w)| g[3] >> 6 == 0 && g[4..] == w[4..] && w[3] & 0x20 == 0)
        .count();
    assert!(same < 10, "{same} ES packets came out right with full keys");
}
