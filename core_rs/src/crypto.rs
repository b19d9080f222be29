//! Envelope encryption of card keys and their blind index.
//!
//! A master key (from the operator's secret store) wraps data keys; the wrapped data keys
//! live in PostgreSQL next to the ciphertext they protect, so rotating the master key means
//! re-wrapping a handful of data keys, not re-encrypting millions of codes.
//!
//! Ciphertext layout (all integers big-endian):
//!
//! ```text
//! version u8 (= 1) | key_id u32 | nonce [12] | AES-256-GCM(code) [len] | tag [16]
//! ```
//!
//! The AAD is `version | key_id | entry_id i64 | sku utf-8`: the header is authenticated,
//! and a ciphertext copied to another row or SKU fails to open. Only the SKU has a variable
//! length and it comes last, so the encoding is unambiguous.
//!
//! Wrapped data key layout: `version u8 (= 1) | nonce [12] | AES-256-GCM(key) [32] | tag [16]`
//! under the master key, AAD `"kami:data-key:v1" | key_id u32`, so a wrapped key stored
//! under another id does not unwrap.
//!
//! Nonces are 96 random bits from the OS per message. With random nonces NIST SP 800-38D
//! bounds a key to 2^32 messages for a collision probability below 2^-32; at 10^8 codes
//! under one data key the probability is about 2^-44. Rotate data keys (a new key id for new
//! imports) long before 2^32 encryptions; nothing here gets near it at shop volumes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{CoreError, CoreResult};
use crate::normalize::normalize_code;

/// Length of the master key and of every data key.
pub const KEY_LEN: usize = 32;
/// Shortest accepted fingerprint key: HMAC-SHA256 gains nothing from more, loses from less.
pub const FINGERPRINT_KEY_MIN_LEN: usize = 32;
/// Current ciphertext format version (first byte of every ciphertext).
pub const CIPHERTEXT_VERSION: u8 = 1;
/// Bytes before the encrypted code: version, key id, nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Bytes a ciphertext adds to the code: header and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAP_VERSION: u8 = 1;
const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;
const WRAP_AAD_PREFIX: &[u8] = b"kami:data-key:v1";
/// Nonces for a batch are drawn in one OS call per this many entries: a syscall per entry
/// would cost more than the encryption itself, and a bounded chunk keeps memory flat.
const NONCE_CHUNK: usize = 1024;

fn fill_random(buf: &mut [u8]) -> CoreResult<()> {
    getrandom::fill(buf)
        .map_err(|_| CoreError::Crypto("the OS random number generator failed".into()))
}

struct DataKey {
    cipher: Aes256Gcm,
    // Kept only to tell an idempotent re-add from a conflicting one; zeroized on drop, as
    // the key schedule inside `cipher` is (aes-gcm's `zeroize` feature).
    raw: Zeroizing<[u8; KEY_LEN]>,
}

impl DataKey {
    fn new(raw: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut key = Key::<Aes256Gcm>::from(*raw);
        let cipher = Aes256Gcm::new(&key);
        zeroize::Zeroize::zeroize(key.as_mut_slice());
        Self { cipher, raw }
    }
}

/// The master key and the data keys it unwrapped. Holds no plaintext beyond one call.
///
/// Cheap to clone (data keys are shared), so a binding can swap in an updated copy
/// instead of locking readers out during rotation.
#[derive(Clone)]
pub struct Keyring {
    master: Aes256Gcm,
    keys: HashMap<u32, Arc<DataKey>>,
    active: Option<u32>,
}

// Key material must never reach a log line, even through `{:?}`.
impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active_key_id", &self.active)
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

fn wrap_aad(key_id: u32) -> [u8; WRAP_AAD_PREFIX.len() + 4] {
    let mut aad = [0u8; WRAP_AAD_PREFIX.len() + 4];
    aad[..WRAP_AAD_PREFIX.len()].copy_from_slice(WRAP_AAD_PREFIX);
    aad[WRAP_AAD_PREFIX.len()..].copy_from_slice(&key_id.to_be_bytes());
    aad
}

/// The AAD of one entry, rebuilt in place per entry: the SKU tail stays, the fixed-size
/// head (version, key id, entry id) is overwritten.
struct EntryAad(Vec<u8>);

impl EntryAad {
    const HEAD: usize = 1 + 4 + 8;

    fn new(sku: &str) -> Self {
        let mut aad = Vec::with_capacity(Self::HEAD + sku.len());
        aad.resize(Self::HEAD, 0);
        aad.extend_from_slice(sku.as_bytes());
        Self(aad)
    }

    fn set(&mut self, key_id: u32, entry_id: i64) -> &[u8] {
        self.0[0] = CIPHERTEXT_VERSION;
        self.0[1..5].copy_from_slice(&key_id.to_be_bytes());
        self.0[5..Self::HEAD].copy_from_slice(&entry_id.to_be_bytes());
        &self.0
    }
}

/// Ciphertexts of a batch, back to back in one buffer (one allocation per batch).
#[derive(Debug, Default)]
pub struct Sealed {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Sealed {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.buf[start..self.ends[i]]
        })
    }
}

/// Plaintexts of a batch, back to back in one buffer that is zeroized when dropped.
#[derive(Default)]
pub struct Opened {
    text: Zeroizing<String>,
    ends: Vec<usize>,
}

impl Opened {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.text[start..self.ends[i]]
        })
    }
}

/// The key id in a ciphertext's header, to find entries still under a retired data key.
pub fn key_id_of(ciphertext: &[u8]) -> CoreResult<u32> {
    parse_header(ciphertext).map(|(key_id, _)| key_id)
}

fn parse_header(ciphertext: &[u8]) -> CoreResult<(u32, &[u8])> {
    if ciphertext.len() < OVERHEAD {
        return Err(CoreError::Crypto("ciphertext too short".into()));
    }
    if ciphertext[0] != CIPHERTEXT_VERSION {
        return Err(CoreError::Crypto(format!(
            "unsupported ciphertext version {}",
            ciphertext[0]
        )));
    }
    let key_id = u32::from_be_bytes([ciphertext[1], ciphertext[2], ciphertext[3], ciphertext[4]]);
    Ok((key_id, &ciphertext[5..]))
}

impl Keyring {
    /// A keyring with no data keys yet; `master_key` must be exactly 32 bytes.
    pub fn new(master_key: &[u8]) -> CoreResult<Self> {
        let key = Key::<Aes256Gcm>::try_from(master_key).map_err(|_| {
            CoreError::InvalidArgument(format!(
                "the master key must be {KEY_LEN} bytes, got {}",
                master_key.len()
            ))
        })?;
        let master = Aes256Gcm::new(&key);
        // `key` is a copy on our stack; do not leave it behind.
        let mut key = key;
        zeroize::Zeroize::zeroize(key.as_mut_slice());
        Ok(Self {
            master,
            keys: HashMap::new(),
            active: None,
        })
    }

    pub fn active_key_id(&self) -> Option<u32> {
        self.active
    }

    /// Loaded data key ids, ascending.
    pub fn key_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Creates a random data key under `key_id`, loads it (not active) and returns it
    /// wrapped by the master key, for the caller to store.
    ///
    /// Not made active here: the caller activates it once the wrapped key is durably stored,
    /// or a crash in between would leave ciphertext under a key nobody kept.
    pub fn generate_data_key(&mut self, key_id: u32) -> CoreResult<Vec<u8>> {
        if self.keys.contains_key(&key_id) {
            return Err(CoreError::InvalidArgument(format!(
                "data key {key_id} already exists"
            )));
        }
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(raw.as_mut_slice())?;
        let mut wrapped = vec![0u8; WRAPPED_LEN];
        wrapped[0] = WRAP_VERSION;
        fill_random(&mut wrapped[1..=NONCE_LEN])?;
        let (head, body) = wrapped.split_at_mut(1 + NONCE_LEN);
        let (sealed_key, tag_out) = body.split_at_mut(KEY_LEN);
        sealed_key.copy_from_slice(raw.as_slice());
        let nonce =
            Nonce::try_from(&head[1..]).map_err(|_| CoreError::Crypto("nonce length".into()))?;
        let tag = self
            .master
            .encrypt_inout_detached(&nonce, &wrap_aad(key_id), sealed_key.into())
            .map_err(|_| CoreError::Crypto("cannot wrap the data key".into()))?;
        tag_out.copy_from_slice(&tag);
        self.keys.insert(key_id, Arc::new(DataKey::new(raw)));
        Ok(wrapped)
    }

    /// Unwraps a stored data key and loads it under `key_id`. Loading the same key twice is
    /// a no-op; loading a different key under a loaded id is refused.
    pub fn add_data_key(&mut self, key_id: u32, wrapped: &[u8]) -> CoreResult<()> {
        let unwrap_failed = || {
            CoreError::Crypto(format!(
                "cannot unwrap data key {key_id}: wrong master key or damaged blob"
            ))
        };
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
            return Err(unwrap_failed());
        }
        let nonce = Nonce::try_from(&wrapped[1..=NONCE_LEN]).map_err(|_| unwrap_failed())?;
        let tag =
            Tag::try_from(&wrapped[1 + NONCE_LEN + KEY_LEN..]).map_err(|_| unwrap_failed())?;
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(&wrapped[1 + NONCE_LEN..1 + NONCE_LEN + KEY_LEN]);
        self.master
            .decrypt_inout_detached(&nonce, &wrap_aad(key_id), raw.as_mut_slice().into(), &tag)
            .map_err(|_| unwrap_failed())?;
        if let Some(existing) = self.keys.get(&key_id) {
            return if bool::from(existing.raw.ct_eq(&*raw)) {
                Ok(())
            } else {
                Err(CoreError::InvalidArgument(format!(
                    "data key {key_id} is already loaded with a different key"
                )))
            };
        }
        self.keys.insert(key_id, Arc::new(DataKey::new(raw)));
        Ok(())
    }

    /// Makes `key_id` the key new ciphertext is written with.
    pub fn set_active(&mut self, key_id: u32) -> CoreResult<()> {
        if !self.keys.contains_key(&key_id) {
            return Err(CoreError::InvalidArgument(format!(
                "data key {key_id} is not loaded"
            )));
        }
        self.active = Some(key_id);
        Ok(())
    }

    fn active_key(&self) -> CoreResult<(u32, &DataKey)> {
        let id = self
            .active
            .ok_or_else(|| CoreError::Crypto("no active data key".into()))?;
        let key = self
            .keys
            .get(&id)
            .ok_or_else(|| CoreError::Crypto("no active data key".into()))?;
        let key: &DataKey = key;
        Ok((id, key))
    }

    fn key(&self, key_id: u32) -> CoreResult<&DataKey> {
        self.keys
            .get(&key_id)
            .map(Arc::as_ref)
            .ok_or_else(|| CoreError::Crypto(format!("data key {key_id} is not loaded")))
    }

    /// Encrypts one code for (sku, entry_id) under the active data key.
    pub fn encrypt(&self, sku: &str, entry_id: i64, code: &str) -> CoreResult<Vec<u8>> {
        let sealed = self.encrypt_many(sku, std::iter::once((entry_id, code)))?;
        Ok(sealed.buf)
    }

    /// Encrypts a batch for one SKU under the active data key.
    pub fn encrypt_many<'a, I>(&self, sku: &str, items: I) -> CoreResult<Sealed>
    where
        I: IntoIterator<Item = (i64, &'a str)>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let (key_id, key) = self.active_key()?;
        let items = items.into_iter();
        // Sized up front: one allocation, no copying as a million entries go in.
        let size = items.clone().map(|(_, code)| code.len() + OVERHEAD).sum();
        let mut sealed = Sealed {
            buf: Vec::with_capacity(size),
            ends: Vec::with_capacity(items.len()),
        };
        let mut aad = EntryAad::new(sku);
        let mut nonces = [0u8; NONCE_LEN * NONCE_CHUNK];
        let mut remaining = items.len();
        let mut next_nonce = NONCE_CHUNK;
        for (entry_id, code) in items {
            if next_nonce == NONCE_CHUNK {
                let chunk = remaining.min(NONCE_CHUNK);
                fill_random(&mut nonces[..chunk * NONCE_LEN])?;
                next_nonce = 0;
            }
            let nonce_bytes = &nonces[next_nonce * NONCE_LEN..(next_nonce + 1) * NONCE_LEN];
            next_nonce += 1;
            remaining -= 1;

            let start = sealed.buf.len();
            sealed.buf.reserve(OVERHEAD + code.len());
            sealed.buf.push(CIPHERTEXT_VERSION);
            sealed.buf.extend_from_slice(&key_id.to_be_bytes());
            sealed.buf.extend_from_slice(nonce_bytes);
            sealed.buf.extend_from_slice(code.as_bytes());
            let body = &mut sealed.buf[start + HEADER_LEN..];
            let nonce = Nonce::try_from(nonce_bytes)
                .map_err(|_| CoreError::Crypto("nonce length".into()))?;
            let tag = key
                .cipher
                .encrypt_inout_detached(&nonce, aad.set(key_id, entry_id), body.into())
                .map_err(|_| CoreError::Crypto(format!("cannot encrypt entry {entry_id}")))?;
            sealed.buf.extend_from_slice(&tag);
            sealed.ends.push(sealed.buf.len());
        }
        Ok(sealed)
    }

    /// Decrypts one ciphertext of (sku, entry_id).
    pub fn decrypt(&self, sku: &str, entry_id: i64, ciphertext: &[u8]) -> CoreResult<String> {
        let opened = self.decrypt_many(sku, std::iter::once((entry_id, ciphertext)))?;
        Ok(opened.iter().next().map(str::to_owned).unwrap_or_default())
    }

    /// Decrypts a batch for one SKU; fails whole on the first entry that does not open.
    pub fn decrypt_many<'a, I>(&self, sku: &str, items: I) -> CoreResult<Opened>
    where
        I: IntoIterator<Item = (i64, &'a [u8])>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let items = items.into_iter();
        // Sized up front so the buffer never reallocates: a reallocation would leave a copy
        // of the plaintext so far in freed memory, out of reach of the zeroizing drop.
        let size = items
            .clone()
            .map(|(_, ciphertext)| ciphertext.len().saturating_sub(OVERHEAD))
            .sum();
        let mut buf = Zeroizing::new(Vec::with_capacity(size));
        let mut ends = Vec::with_capacity(items.len());
        let mut aad = EntryAad::new(sku);
        // Batches are almost always under one key: skip the map lookup when it repeats.
        let mut cached: Option<(u32, &DataKey)> = None;
        for (entry_id, ciphertext) in items {
            let failed = || {
                CoreError::Crypto(format!(
                    "cannot decrypt entry {entry_id}: wrong key, SKU or entry, or tampered"
                ))
            };
            let (key_id, rest) = parse_header(ciphertext)?;
            let key = match cached {
                Some((id, key)) if id == key_id => key,
                _ => {
                    let key = self.key(key_id)?;
                    cached = Some((key_id, key));
                    key
                }
            };
            let (nonce, body) = rest.split_at(NONCE_LEN);
            let (body, tag) = body.split_at(body.len() - TAG_LEN);
            let nonce = Nonce::try_from(nonce).map_err(|_| failed())?;
            let tag = Tag::try_from(tag).map_err(|_| failed())?;
            let start = buf.len();
            buf.extend_from_slice(body);
            key.cipher
                .decrypt_inout_detached(
                    &nonce,
                    aad.set(key_id, entry_id),
                    (&mut buf[start..]).into(),
                    &tag,
                )
                .map_err(|_| failed())?;
            if std::str::from_utf8(&buf[start..]).is_err() {
                return Err(CoreError::Crypto(format!(
                    "entry {entry_id} decrypted to invalid UTF-8"
                )));
            }
            ends.push(buf.len());
        }
        // Every piece was checked above; this only moves the buffer into a `String`.
        let bytes = std::mem::take(&mut *buf);
        let text = String::from_utf8(bytes).map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            CoreError::Crypto("decrypted data is not UTF-8".into())
        })?;
        Ok(Opened {
            text: Zeroizing::new(text),
            ends,
        })
    }
}

/// HMAC-SHA256 over normalised codes: the blind index used to find duplicates without
/// decrypting. Keyed separately from encryption so a leaked index key reveals no plaintext.
#[derive(Clone)]
pub struct Fingerprinter {
    // Keyed state after absorbing the key, cloned per code so the key schedule is paid once.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter(..)")
    }
}

pub const FINGERPRINT_LEN: usize = 32;

impl Fingerprinter {
    pub fn new(key: &[u8]) -> CoreResult<Self> {
        if key.len() < FINGERPRINT_KEY_MIN_LEN {
            return Err(CoreError::InvalidArgument(format!(
                "the fingerprint key must be at least {FINGERPRINT_KEY_MIN_LEN} bytes, got {}",
                key.len()
            )));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .map_err(|_| CoreError::InvalidArgument("unusable fingerprint key".into()))?;
        Ok(Self { mac })
    }

    pub fn fingerprint(&self, code: &str) -> [u8; FINGERPRINT_LEN] {
        let mut mac = self.mac.clone();
        mac.update(normalize_code(code).as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The first occurrence of each distinct fingerprint among the non-empty `codes`, as
    /// (fingerprint, index into `codes`), in fingerprint order. Imports insert in this order:
    /// the unique index on fingerprints then grows by appending instead of at random pages.
    /// Large inputs are fingerprinted on every core (HMAC is most of the work).
    pub fn distinct_sorted<S: AsRef<str> + Sync>(
        &self,
        codes: &[S],
    ) -> Vec<([u8; FINGERPRINT_LEN], usize)> {
        const PER_THREAD_MIN: usize = 50_000;
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(codes.len() / PER_THREAD_MIN)
            .max(1);
        let chunk = codes.len().div_ceil(threads).max(1);
        let fingerprint_chunk = |start: usize, part: &[S]| {
            part.iter()
                .enumerate()
                .filter(|(_, code)| !code.as_ref().is_empty())
                .map(|(offset, code)| (self.fingerprint(code.as_ref()), start + offset))
                .collect::<Vec<_>>()
        };
        let mut entries: Vec<([u8; FINGERPRINT_LEN], usize)> = if threads == 1 {
            fingerprint_chunk(0, codes)
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = codes
                    .chunks(chunk)
                    .enumerate()
                    .map(|(n, part)| scope.spawn(move || fingerprint_chunk(n * chunk, part)))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|worker| {
                        worker
                            .join()
                            .unwrap_or_else(|p| std::panic::resume_unwind(p))
                    })
                    .collect()
            })
        };
        // Sorting by (fingerprint, index) puts each fingerprint's first occurrence first.
        entries.sort_unstable();
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        entries
    }
}

/// Compares two byte strings without an early exit on the first difference. Lengths are
/// not secret (a different length returns false at once).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    const MASTER: [u8; 32] = [7; 32];

    fn keyring_with(ids: &[u32]) -> (Keyring, Vec<Vec<u8>>) {
        let mut ring = Keyring::new(&MASTER).expect("master key");
        let wrapped = ids
            .iter()
            .map(|&id| ring.generate_data_key(id).expect("generate"))
            .collect();
        ring.set_active(*ids.last().expect("ids")).expect("active");
        (ring, wrapped)
    }

    #[test]
    fn round_trip() {
        let (ring, _) = keyring_with(&[1]);
        for code in ["", "ABCD-EFGH-1234", "卡密🎮 é", &"x".repeat(10_000)] {
            let ct = ring.encrypt("SKU-1", 42, code).expect("encrypt");
            assert_eq!(ct.len(), code.len() + OVERHEAD);
            assert_eq!(ct[0], CIPHERTEXT_VERSION);
            assert_eq!(key_id_of(&ct).expect("header"), 1);
            assert_eq!(ring.decrypt("SKU-1", 42, &ct).expect("decrypt"), code);
        }
    }

    #[test]
    fn same_code_encrypts_differently() {
        let (ring, _) = keyring_with(&[1]);
        let a = ring.encrypt("S", 1, "code").expect("encrypt");
        let b = ring.encrypt("S", 1, "code").expect("encrypt");
        assert_ne!(a, b);
    }

    #[test]
    fn batch_round_trip_crosses_nonce_chunks() {
        let (ring, _) = keyring_with(&[3]);
        let codes: Vec<String> = (0..2 * NONCE_CHUNK + 5)
            .map(|i| format!("code-{i:032}"))
            .collect();
        let items: Vec<(i64, &str)> = (0..).zip(codes.iter().map(String::as_str)).collect();
        let sealed = ring
            .encrypt_many("SKU", items.iter().copied())
            .expect("encrypt");
        assert_eq!(sealed.len(), codes.len());
        let nonces: std::collections::HashSet<&[u8]> =
            sealed.iter().map(|ct| &ct[5..HEADER_LEN]).collect();
        assert_eq!(nonces.len(), codes.len());
        let cts: Vec<(i64, &[u8])> = (0..).zip(sealed.iter()).collect();
        let opened = ring.decrypt_many("SKU", cts).expect("decrypt");
        assert!(opened.iter().eq(codes.iter().map(String::as_str)));
        assert!(
            ring.decrypt_many("SKU", std::iter::empty())
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn tampering_anywhere_fails() {
        let (ring, _) = keyring_with(&[1]);
        let ct = ring.encrypt("SKU", 7, "ABCD-1234").expect("encrypt");
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(ring.decrypt("SKU", 7, &bad), Err(CoreError::Crypto(_))),
                "byte {i}"
            );
        }
        for len in 0..ct.len() {
            assert!(
                ring.decrypt("SKU", 7, &ct[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = ct.clone();
        longer.push(0);
        assert!(ring.decrypt("SKU", 7, &longer).is_err());
    }

    #[test]
    fn aad_binds_sku_and_entry() {
        let (ring, _) = keyring_with(&[1]);
        let ct = ring.encrypt("SKU-A", 7, "secret").expect("encrypt");
        assert!(ring.decrypt("SKU-B", 7, &ct).is_err());
        assert!(ring.decrypt("SKU-A", 8, &ct).is_err());
        assert!(ring.decrypt("SKU-A", -7, &ct).is_err());
        assert!(ring.decrypt("SKU-A7", 7, &ct).is_err());
        assert_eq!(ring.decrypt("SKU-A", 7, &ct).expect("decrypt"), "secret");
    }

    #[test]
    fn errors_carry_no_plaintext() {
        let (ring, _) = keyring_with(&[1]);
        let mut ct = ring.encrypt("SKU", 1, "TOP-SECRET-CODE").expect("encrypt");
        let last = ct.len() - 1;
        ct[last] ^= 1;
        let message = ring
            .decrypt("SKU", 1, &ct)
            .expect_err("tampered")
            .to_string();
        assert!(!message.contains("TOP-SECRET"), "{message}");
        assert_eq!(
            format!("{ring:?}"),
            "Keyring { active_key_id: Some(1), key_ids: [1], .. }"
        );
    }

    #[test]
    fn rotation_keeps_old_ciphertext_readable() {
        let (mut ring, _) = keyring_with(&[1]);
        let old = ring.encrypt("SKU", 1, "old").expect("encrypt");
        ring.generate_data_key(2).expect("generate");
        assert_eq!(
            ring.active_key_id(),
            Some(1),
            "a new key is not active until asked"
        );
        ring.set_active(2).expect("activate");
        let new = ring.encrypt("SKU", 2, "new").expect("encrypt");
        assert_eq!(key_id_of(&old).expect("header"), 1);
        assert_eq!(key_id_of(&new).expect("header"), 2);
        let opened = ring
            .decrypt_many("SKU", [(1, old.as_slice()), (2, new.as_slice())])
            .expect("decrypt");
        assert_eq!(opened.iter().collect::<Vec<_>>(), ["old", "new"]);
        assert_eq!(ring.key_ids(), [1, 2]);
    }

    #[test]
    fn wrapped_keys_reload_under_the_same_master_only() {
        let (ring, wrapped) = keyring_with(&[1, 2]);
        let ct = ring.encrypt("SKU", 5, "code").expect("encrypt");

        let mut reloaded = Keyring::new(&MASTER).expect("master");
        reloaded.add_data_key(1, &wrapped[0]).expect("unwrap 1");
        reloaded.add_data_key(2, &wrapped[1]).expect("unwrap 2");
        reloaded
            .add_data_key(2, &wrapped[1])
            .expect("same key again is a no-op");
        assert!(
            matches!(
                reloaded.add_data_key(2, &wrapped[0]),
                Err(CoreError::Crypto(_))
            ),
            "bound to its id"
        );
        assert_eq!(reloaded.decrypt("SKU", 5, &ct).expect("decrypt"), "code");

        let mut other = Keyring::new(&[8; 32]).expect("master");
        assert!(matches!(
            other.add_data_key(1, &wrapped[0]),
            Err(CoreError::Crypto(_))
        ));
        assert!(matches!(
            other.add_data_key(1, &wrapped[0][..10]),
            Err(CoreError::Crypto(_))
        ));
        assert!(other.decrypt("SKU", 5, &ct).is_err());
    }

    #[test]
    fn conflicting_key_ids_are_refused() {
        let (mut ring, _) = keyring_with(&[1]);
        assert!(matches!(
            ring.generate_data_key(1),
            Err(CoreError::InvalidArgument(_))
        ));
        let mut other = Keyring::new(&MASTER).expect("master");
        let foreign = other.generate_data_key(1).expect("generate");
        assert!(matches!(
            ring.add_data_key(1, &foreign),
            Err(CoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            ring.set_active(9),
            Err(CoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn needs_keys() {
        assert!(matches!(
            Keyring::new(&[0; 31]),
            Err(CoreError::InvalidArgument(_))
        ));
        let mut ring = Keyring::new(&MASTER).expect("master");
        assert!(matches!(
            ring.encrypt("S", 1, "c"),
            Err(CoreError::Crypto(_))
        ));
        ring.generate_data_key(1).expect("generate");
        assert!(
            matches!(ring.encrypt("S", 1, "c"), Err(CoreError::Crypto(_))),
            "not active yet"
        );
        let mut foreign = Keyring::new(&MASTER).expect("master");
        foreign.generate_data_key(9).expect("generate");
        foreign.set_active(9).expect("active");
        let ct = foreign.encrypt("S", 1, "c").expect("encrypt");
        assert!(matches!(ring.decrypt("S", 1, &ct), Err(CoreError::Crypto(m)) if m.contains('9')));
        let mut bad_version = ct.clone();
        bad_version[0] = 2;
        assert!(key_id_of(&bad_version).is_err());
    }

    #[test]
    fn distinct_sorted_keeps_first_occurrences_in_fingerprint_order() {
        let fp = Fingerprinter::new(&[7; 32]).expect("key");
        // " b" normalises to "b": a duplicate of index 1. Empty codes are skipped.
        let codes = ["c", "b", "", "a", " b", "c", "d"];
        let distinct = fp.distinct_sorted(&codes);
        let mut expected: Vec<([u8; FINGERPRINT_LEN], usize)> = [0, 1, 3, 6]
            .into_iter()
            .map(|index| (fp.fingerprint(codes[index]), index))
            .collect();
        expected.sort_unstable();
        assert_eq!(distinct, expected);
        assert!(distinct.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert!(fp.distinct_sorted::<&str>(&[]).is_empty());
    }

    #[test]
    fn distinct_sorted_is_the_same_on_many_threads() {
        let fp = Fingerprinter::new(&[9; 32]).expect("key");
        // Enough codes for several threads; every third one repeats an earlier code.
        let codes: Vec<String> = (0..200_000)
            .map(|n| {
                if n % 3 == 2 {
                    format!("K{}", n / 7)
                } else {
                    format!("K{n}")
                }
            })
            .collect();
        let distinct = fp.distinct_sorted(&codes);
        let mut first_seen = std::collections::HashMap::new();
        for (index, code) in codes.iter().enumerate() {
            first_seen.entry(fp.fingerprint(code)).or_insert(index);
        }
        let mut expected: Vec<_> = first_seen.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(distinct, expected);
    }

    #[test]
    fn fingerprints_normalise_and_depend_on_the_key() {
        let fp = Fingerprinter::new(&[1; 32]).expect("key");
        assert_eq!(fp.fingerprint(" e\u{301}X\n"), fp.fingerprint("\u{e9}X"));
        assert_ne!(fp.fingerprint("abc"), fp.fingerprint("ABC"));
        let other = Fingerprinter::new(&[2; 64]).expect("key");
        assert_ne!(fp.fingerprint("abc"), other.fingerprint("abc"));
        assert!(Fingerprinter::new(&[1; 31]).is_err());
        // RFC 4231 test case 6 (key longer than a block): plain HMAC-SHA256 underneath.
        let fp = Fingerprinter::new(&[0xaa; 131]).expect("key");
        let expected = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
        let got = fp
            .fingerprint("Test Using Larger Than Block-Size Key - Hash Key First")
            .iter()
            .fold(String::new(), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            });
        assert_eq!(got, expected);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
