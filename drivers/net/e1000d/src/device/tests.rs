//! Host tests of what needs no hardware: EEPROM images and receive address
//! registers. The rings have their own tests in `ring.rs`.

use super::eeprom::*;
use super::Throttle;

/// An EEPROM image as QEMU's e1000 builds it for `mac`: the MAC in words
/// 0..3, the rest zero here, and word 63 making the sum 0xBABA.
fn image(mac: [u8; 6]) -> [u16; WORDS] {
    let mut w = [0u16; WORDS];
    for i in 0..3 {
        w[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    w[11] = 0x100e;
    w[13] = 0x100e;
    let sum = w[..WORDS - 1].iter().fold(0u16, |a, &x| a.wrapping_add(x));
    w[WORDS - 1] = SUM.wrapping_sub(sum);
    w
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x05];

/// The EEPROM of QEMU 7.2's `-device e1000,mac=52:54:00:12:34:05`, read
/// word by word through EERD by this driver in the guest (its debug log).
const QEMU_EEPROM: [u16; WORDS] = [
    0x5452, 0x1200, 0x0534, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000, //
    0x3000, 0x1000, 0x6403, 0x100e, 0x8086, 0x100e, 0x8086, 0x3040, //
    0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700, //
    0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706, //
    0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xcaad, //
];

#[test]
fn the_captured_qemu_eeprom_parses() {
    assert_eq!(mac_from_words(&QEMU_EEPROM), Ok(MAC));
    // Any single flipped bit breaks the checksum.
    for word in [0, 2, 30, 63] {
        let mut w = QEMU_EEPROM;
        w[word] ^= 0x0100;
        assert!(
            matches!(mac_from_words(&w), Err(EepromError::Checksum(_))),
            "word {word}"
        );
    }
}

#[test]
fn mac_comes_from_the_first_three_words_low_byte_first() {
    let w = image(MAC);
    assert_eq!(w[0], 0x5452);
    assert_eq!(mac_from_words(&w), Ok(MAC));
}

#[test]
fn checksum_and_address_are_verified() {
    let mut w = image(MAC);
    w[20] ^= 1;
    assert!(matches!(mac_from_words(&w), Err(EepromError::Checksum(s)) if s != SUM));
    // A multicast address with a good checksum is still not ours to use.
    let w = image([0x01, 0x00, 0x5e, 0, 0, 1]);
    assert_eq!(
        mac_from_words(&w),
        Err(EepromError::BadMac([0x01, 0x00, 0x5e, 0, 0, 1]))
    );
    // A blank (all 0xffff) EEPROM fails the checksum.
    assert!(mac_from_words(&[0xffff; WORDS]).is_err());
    assert!(!is_station_address(&[0; 6]));
    assert!(!is_station_address(&[0xff; 6]));
}

#[test]
fn receive_address_registers_round_trip() {
    let (ral, rah) = rar_from_mac(&MAC);
    assert_eq!(ral, 0x1200_5452);
    assert_eq!(rah, 0x0000_0534);
    assert_eq!(mac_from_rar(ral, rah), None, "AV clear: not an address");
    assert_eq!(mac_from_rar(ral, rah | 1 << 31), Some(MAC));
}

#[test]
fn the_eeprom_wins_and_disagreement_is_reported() {
    let other = [0x52, 0x54, 0x00, 0, 0, 9];
    assert_eq!(choose_mac(Ok(MAC), Some(MAC)), Ok((MAC, None)));
    let (m, note) = choose_mac(Ok(MAC), Some(other)).unwrap();
    assert_eq!(m, MAC);
    assert!(note.unwrap().contains("52:54:00:00:00:09"));
    let (m, note) = choose_mac(Ok(MAC), None).unwrap();
    assert_eq!(m, MAC);
    assert!(note.is_some());
    let (m, note) = choose_mac(Err(EepromError::Checksum(1)), Some(other)).unwrap();
    assert_eq!(m, other);
    assert!(note.unwrap().contains("checksum"));
    assert!(choose_mac(Err(EepromError::Timeout(3)), None).is_err());
    assert!(choose_mac(Err(EepromError::Checksum(1)), Some([0xff; 6])).is_err());
}

#[test]
fn throttle_logs_powers_of_ten() {
    let mut t = Throttle::default();
    let logged: Vec<u64> = (0..1000).filter_map(|_| t.hit()).collect();
    assert_eq!(logged, vec![1, 10, 100, 1000]);
}
