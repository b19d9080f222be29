//! Arbitrary ciphertext and wrapped keys: errors, never panics, never a false success.

#![no_main]

use std::sync::OnceLock;

use kami_core::crypto::Keyring;
use libfuzzer_sys::fuzz_target;

fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let mut ring = Keyring::new(&[9; 32]).expect("32-byte key");
        ring.generate_data_key(1).expect("fresh id");
        ring.set_active(1).expect("loaded");
        ring
    })
}

fuzz_target!(|data: &[u8]| {
    let ring = keyring();
    assert!(ring.decrypt("SKU", 1, data).is_err(), "a forged ciphertext opened");
    let _ = kami_core::crypto::key_id_of(data);
    let mut other = ring.clone();
    assert!(other.add_data_key(2, data).is_err(), "a forged wrapped key opened");
});
