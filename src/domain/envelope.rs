//! Client-side envelope encryption of a backup's stored stream: the chunked AES-256-GCM format
//! (a STREAM construction), its data key, and nothing that does I/O.
//!
//! The format, byte for byte (DESIGN.md "Encrypted backups" says the same, for a reader without
//! pgvault):
//!
//! - A 12-byte header: the magic `PGVENC`, the format version `1`, the algorithm `1`
//!   (AES-256-GCM), and the chunk size `C` as a big-endian `u32`.
//! - Then the chunks, in order. Chunk `i` (from 0) is the AES-256-GCM encryption of the next `C`
//!   bytes of the plain stream, followed by its 16-byte tag: every chunk but the last holds
//!   exactly `C` plain bytes (`C + 16` stored bytes); the last holds 0 to `C` (it is empty only
//!   when the whole plain stream is).
//! - Nonce of chunk `i`: 4 zero bytes, then `i` as a big-endian `u64` (12 bytes). The data key is
//!   fresh for every backup, so a nonce never repeats under one key.
//! - Associated data of chunk `i`: the 12 header bytes, the backup id's length as a big-endian
//!   `u32`, the backup id (UTF-8), `i` as a big-endian `u64`, and one byte: 1 for the last chunk,
//!   0 for every other.
//!
//! So a chunk moved to another place, taken from another backup, the stream cut at a chunk
//! boundary, or bytes appended after the last chunk all fail authentication, and the reader
//! says which chunk.

use crate::domain::error::{Error, Result};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 6] = b"PGVENC";
pub const FORMAT_VERSION: u8 = 1;
/// Algorithm byte 1 in the header.
pub const ALG_AES_256_GCM: u8 = 1;
pub const HEADER_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// 1 MiB: small enough that buffering one chunk costs little, large enough that the 16-byte tag
/// and the per-chunk call are noise.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// The algorithm's name in the manifest.
pub const ALGORITHM: &str = "aes-256-gcm-chunked-v1";
/// The Key Vault wrap algorithm pgvault uses on an RSA key.
pub const WRAP_ALGORITHM: &str = "RSA-OAEP-256";
pub const KEY_LEN: usize = 32;

/// A backup's 256-bit data key. Zeroed when dropped; never printed (its `Debug` says
/// `**redacted**`).
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(**redacted**)")
    }
}

impl DataKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(k.as_mut())
            .map_err(|_| Error::transient("generate a data key: the system random generator failed"))?;
        Ok(DataKey(k))
    }

    /// A key as Key Vault unwrapped it; `bytes` should be zeroed by the caller afterwards.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::permanent(format!("the unwrapped data key has {} bytes, not {KEY_LEN}", bytes.len()))
        })?;
        Ok(DataKey(Zeroizing::new(arr)))
    }

    /// The key bytes, for wrapping only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.expose()).expect("a 32-byte key"))
    }
}

/// A Key Vault key identifier: `https://<vault host>/keys/<name>` with an optional
/// `/<version>`. Not a secret: it names a key, and only an identity Key Vault allows can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    /// `https://<vault host>` (no trailing slash).
    pub vault_url: String,
    pub name: String,
    pub version: Option<String>,
}

impl KeyId {
    pub fn parse(s: &str) -> Result<KeyId> {
        let bad = |why: &str| {
            Error::permanent(format!("bad Key Vault key identifier {s:?}: {why}"))
                .with_hint("use https://<vault>.vault.azure.net/keys/<name> (optionally /<version>)")
        };
        let url = url::Url::parse(s.trim()).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad("it is not an https URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it has a query or fragment"));
        }
        let host = url.host_str().ok_or_else(|| bad("it has no host"))?;
        let vault_url = match url.port() {
            Some(p) => format!("https://{host}:{p}"),
            None => format!("https://{host}"),
        };
        let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
        let ok = |n: &str| !n.is_empty() && n.len() <= 127 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let (name, version) = match segments.as_slice() {
            ["keys", name] if ok(name) => (name.to_string(), None),
            ["keys", name, version] if ok(name) && ok(version) => (name.to_string(), Some(version.to_string())),
            _ => return Err(bad("the path is not /keys/<name> or /keys/<name>/<version>")),
        };
        Ok(KeyId { vault_url, name, version })
    }

    /// The identifier of version `version` of this key.
    pub fn with_version(&self, version: &str) -> KeyId {
        KeyId { version: Some(version.to_string()), ..self.clone() }
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/keys/{}", self.vault_url, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The 12-byte header for chunk size `chunk_size`.
pub fn header(chunk_size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6] = FORMAT_VERSION;
    h[7] = ALG_AES_256_GCM;
    h[8..].copy_from_slice(&chunk_size.to_be_bytes());
    h
}

/// The nonce of chunk `index`.
pub fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// The associated data of chunk `index` of backup `backup_id`.
pub fn aad(header: &[u8; HEADER_LEN], backup_id: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + 4 + backup_id.len() + 9);
    a.extend_from_slice(header);
    a.extend_from_slice(&(backup_id.len() as u32).to_be_bytes());
    a.extend_from_slice(backup_id.as_bytes());
    a.extend_from_slice(&index.to_be_bytes());
    a.push(last as u8);
    a
}

/// Stored size of a plain stream of `plain` bytes.
pub fn sealed_len(plain: u64, chunk_size: u32) -> u64 {
    let c = chunk_size as u64;
    let chunks = if plain == 0 { 1 } else { plain.div_ceil(c) };
    HEADER_LEN as u64 + plain + chunks * TAG_LEN as u64
}

/// A `Write` that encrypts what it is given into `inner` in the format above. Holds at most one
/// chunk; [`EncryptWriter::finish`] seals the last one and must be called.
pub struct EncryptWriter<W: std::io::Write> {
    inner: W,
    key: LessSafeKey,
    backup_id: String,
    header: [u8; HEADER_LEN],
    chunk_size: usize,
    index: u64,
    buf: Vec<u8>,
    header_written: bool,
}

impl<W: std::io::Write> EncryptWriter<W> {
    pub fn new(inner: W, key: &DataKey, backup_id: &str, chunk_size: u32) -> Self {
        assert!(chunk_size > 0, "chunk size is positive");
        Self {
            inner,
            key: key.aead(),
            backup_id: backup_id.to_string(),
            header: header(chunk_size),
            chunk_size: chunk_size as usize,
            index: 0,
            buf: Vec::with_capacity(chunk_size as usize + TAG_LEN),
            header_written: false,
        }
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        if !self.header_written {
            self.inner.write_all(&self.header)?;
            self.header_written = true;
        }
        let aad = aad(&self.header, &self.backup_id, self.index, last);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce(self.index)), Aad::from(aad), &mut self.buf)
            .map_err(|_| std::io::Error::other(format!("encrypt chunk {}", self.index)))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Seal the last chunk and hand back the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.seal(true)?;
        Ok(self.inner)
    }
}

impl<W: std::io::Write> std::io::Write for EncryptWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full chunk is sealed only once more data arrives: until then it may be the last.
            if self.buf.len() == self.chunk_size {
                self.seal(false)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reader's side: fed the stored bytes in order (in pieces of any size), it hands on each
/// chunk's plain bytes only after that chunk authenticated.
///
/// Memory: a chunk that lies whole inside the piece it was given in is opened straight from that
/// piece into its plain buffer (the buffer that is handed on), so it costs nothing here. Only a
/// chunk cut by a piece boundary (or one that ends exactly at the end of a piece, which may be
/// the last chunk) is gathered in `carry`, allocated once: at most one stored chunk is held. The
/// stored bytes are never overwritten, so a chunk that fails can be tried as the other kind
/// (last or not) to say what happened, without a copy kept for the purpose.
pub struct Opener {
    key: LessSafeKey,
    backup_id: String,
    expect_chunk_size: u32,
    header: Option<[u8; HEADER_LEN]>,
    index: u64,
    /// Stored offset of the next unopened chunk (the start of `carry` when it holds bytes).
    offset: u64,
    carry: Vec<u8>,
    plain: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("backup_id", &self.backup_id).field("index", &self.index).finish_non_exhaustive()
    }
}

impl Opener {
    pub fn new(key: &DataKey, backup_id: &str, chunk_size: u32) -> Self {
        Self {
            key: key.aead(),
            backup_id: backup_id.to_string(),
            expect_chunk_size: chunk_size,
            header: None,
            index: 0,
            offset: 0,
            carry: Vec::new(),
            plain: 0,
        }
    }

    fn refuse(&self, why: String) -> Error {
        Error::permanent(format!("backup {:?} does not decrypt: {why}", self.backup_id))
            .with_hint("the stored data was altered; restore from another backup")
    }

    fn chunk_len(&self) -> usize {
        self.expect_chunk_size as usize + TAG_LEN
    }

    /// Feed stored bytes; `out` gets each authenticated chunk's plain bytes, in order.
    pub fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(Vec<u8>) -> Result<()>) -> Result<()> {
        while !data.is_empty() {
            let (used, plain) = self.next(data)?;
            data = &data[used..];
            if let Some(plain) = plain {
                out(plain)?;
            }
        }
        Ok(())
    }

    /// Feed stored bytes up to the next chunk that can be opened: returns how many bytes of
    /// `data` were used, and that chunk's plain bytes if one was opened. At most one chunk per
    /// call, so an async caller can hand each on (and wait) before it opens the next. Call again
    /// with the rest until all of `data` is used.
    pub fn next(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>)> {
        if self.header.is_none() {
            let take = (HEADER_LEN - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            if self.carry.len() < HEADER_LEN {
                return Ok((take, None));
            }
            let got: [u8; HEADER_LEN] = self.carry[..].try_into().expect("header length");
            if got != header(self.expect_chunk_size) {
                return Err(self.refuse(format!(
                    "its header is {}, not the one of format {FORMAT_VERSION} with {} byte chunks that the manifest \
                     describes",
                    hex::encode(got),
                    self.expect_chunk_size
                )));
            }
            self.header = Some(got);
            self.carry = Vec::new();
            self.offset = HEADER_LEN as u64;
            return Ok((take, None));
        }
        let full = self.chunk_len();
        if data.is_empty() {
            return Ok((0, None));
        }
        // A chunk is opened as not-the-last only once a byte after it is seen.
        if self.carry.is_empty() && data.len() > full {
            let plain = self.open(&data[..full], false)?;
            return Ok((full, Some(plain)));
        }
        if self.carry.len() == full {
            // More bytes follow the gathered chunk: it is not the last.
            let carry = std::mem::take(&mut self.carry);
            let opened = self.open(&carry, false);
            self.carry = carry;
            self.carry.clear();
            return Ok((0, Some(opened?)));
        }
        if self.carry.capacity() < full {
            self.carry.reserve_exact(full - self.carry.len());
        }
        let take = (full - self.carry.len()).min(data.len());
        self.carry.extend_from_slice(&data[..take]);
        Ok((take, None))
    }

    /// The stream has ended: open the last chunk. Returns the plain size of the whole stream.
    pub fn finish(mut self, out: &mut dyn FnMut(Vec<u8>) -> Result<()>) -> Result<u64> {
        if self.header.is_none() {
            return Err(self.refuse(format!("the stream ends after {} bytes, inside its header", self.carry.len())));
        }
        if self.carry.len() < TAG_LEN {
            return Err(self.refuse(format!(
                "the stream ends {} bytes into chunk {} (stored bytes {}..), shorter than its tag: the final chunk \
                 is missing",
                self.carry.len(),
                self.index,
                self.offset
            )));
        }
        let carry = std::mem::take(&mut self.carry);
        let plain = self.open(&carry, true)?;
        out(plain)?;
        Ok(self.plain)
    }

    /// Open one stored chunk (`sealed`: ciphertext and tag) into a new plain buffer, leaving
    /// `sealed` as it is.
    fn open(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>> {
        let header = self.header.expect("header read");
        let index = self.index;
        let start = self.offset;
        let len = sealed.len();
        let (cipher, tag) = sealed.split_at(len - TAG_LEN);
        let try_open = |last: bool, into: &mut [u8]| -> bool {
            let aad = aad(&header, &self.backup_id, index, last);
            self.key
                .open_separate_gather(Nonce::assume_unique_for_key(nonce(index)), Aad::from(aad), cipher, tag, into)
                .is_ok()
        };
        let mut plain = vec![0u8; cipher.len()];
        if try_open(last, &mut plain) {
            self.index += 1;
            self.offset += len as u64;
            self.plain += plain.len() as u64;
            return Ok(plain);
        }
        // Say what happened where the format can tell: a chunk sealed as the other kind.
        Err(if try_open(!last, &mut plain) {
            self.refuse(if last {
                format!(
                    "the stream ends after chunk {index} (stored bytes {start}..{}), which is not the final chunk: \
                     the final chunk is missing (the backup was truncated)",
                    start + len as u64
                )
            } else {
                format!(
                    "chunk {index} (stored bytes {start}..{}) is the final chunk, but more bytes follow it: data was \
                     appended",
                    start + len as u64
                )
            })
        } else {
            self.refuse(format!(
                "chunk {index} (stored bytes {start}..{}{}) fails authentication: it was altered, moved, or comes \
                 from another backup",
                start + len as u64,
                if last { ", the final chunk" } else { "" }
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ID: &str = "srv/db/20260101T000000Z-job";

    fn seal(key: &DataKey, id: &str, plain: &[u8], chunk: u32, pieces: usize) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), key, id, chunk);
        for part in plain.chunks(pieces.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn open(key: &DataKey, id: &str, stored: &[u8], chunk: u32, pieces: usize) -> Result<Vec<u8>> {
        let mut o = Opener::new(key, id, chunk);
        let mut plain = Vec::new();
        let mut out = |b: Vec<u8>| {
            plain.extend_from_slice(&b);
            Ok(())
        };
        for part in stored.chunks(pieces.max(1)) {
            o.push(part, &mut out)?;
        }
        let n = o.finish(&mut out)?;
        assert_eq!(n as usize, plain.len());
        Ok(plain)
    }

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        aws_lc_rs::rand::fill(&mut v).unwrap();
        v
    }

    /// A small random number below `n`.
    fn below(n: usize) -> usize {
        let mut b = [0u8; 4];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        u32::from_le_bytes(b) as usize % n.max(1)
    }

    #[test]
    fn round_trips_at_every_size_and_piece_size() {
        let key = DataKey::generate().unwrap();
        for chunk in [1u32, 7, 64] {
            for len in [0usize, 1, 6, 7, 8, 63, 64, 65, 128, 129, 300] {
                let plain = random(len);
                for pieces in [1, 3, 64, 1000] {
                    let stored = seal(&key, ID, &plain, chunk, pieces);
                    assert_eq!(stored.len() as u64, sealed_len(len as u64, chunk), "len {len} chunk {chunk}");
                    assert_eq!(&stored[..HEADER_LEN], &header(chunk));
                    for read_pieces in [1, 5, 17, 4096] {
                        assert_eq!(open(&key, ID, &stored, chunk, read_pieces).unwrap(), plain);
                    }
                }
            }
        }
    }

    #[test]
    fn random_round_trips() {
        let key = DataKey::generate().unwrap();
        for _ in 0..200 {
            let chunk = 1 + below(100) as u32;
            let plain = random(below(1000));
            let stored = seal(&key, ID, &plain, chunk, 1 + below(50));
            assert_eq!(open(&key, ID, &stored, chunk, 1 + below(50)).unwrap(), plain);
        }
    }

    #[test]
    fn every_tamper_kind_is_refused_naming_the_chunk() {
        let key = DataKey::generate().unwrap();
        let chunk = 16u32;
        let full = chunk as usize + TAG_LEN;
        let plain = random(16 * 5 + 3); // 6 chunks: 5 full and a last of 3
        let stored = seal(&key, ID, &plain, chunk, 7);
        let at = |i: usize| HEADER_LEN + i * full;
        for _ in 0..50 {
            // A flipped bit anywhere after the header.
            let mut t = stored.clone();
            let pos = HEADER_LEN + below(stored.len() - HEADER_LEN);
            t[pos] ^= 1 << below(8);
            let e = open(&key, ID, &t, chunk, 1 + below(40)).unwrap_err().to_string();
            let i = (pos - HEADER_LEN) / full;
            assert!(e.contains(&format!("chunk {i} ")), "byte {pos}: {e}");
        }
        // Reordered: chunks 1 and 2 swapped.
        let mut t = stored.clone();
        let (c1, c2) = (stored[at(1)..at(2)].to_vec(), stored[at(2)..at(3)].to_vec());
        t[at(1)..at(2)].copy_from_slice(&c2);
        t[at(2)..at(3)].copy_from_slice(&c1);
        assert!(open(&key, ID, &t, chunk, 9).unwrap_err().to_string().contains("chunk 1 "));
        // Truncated at a chunk boundary.
        let e = open(&key, ID, &stored[..at(3)], chunk, 9).unwrap_err().to_string();
        assert!(e.contains("chunk 2") && e.contains("the final chunk is missing"), "{e}");
        // Truncated inside a chunk, and inside the header.
        assert!(open(&key, ID, &stored[..at(3) + 5], chunk, 9).unwrap_err().to_string().contains("chunk 3"));
        assert!(open(&key, ID, &stored[..HEADER_LEN + 3], chunk, 9).unwrap_err().to_string().contains("tag"));
        assert!(open(&key, ID, &stored[..5], chunk, 9).unwrap_err().to_string().contains("header"));
        // Appended: a copy of a chunk after the last one.
        let mut t = stored.clone();
        t.extend_from_slice(&stored[at(1)..at(2)]);
        let e = open(&key, ID, &t, chunk, 9).unwrap_err().to_string();
        assert!(e.contains("chunk 5 "), "{e}");
        // With a full last chunk, the reader can say that bytes were appended.
        let whole = seal(&key, ID, &plain[..32], chunk, 7);
        let mut t = whole.clone();
        t.extend_from_slice(&whole[at(0)..at(1)]);
        let e = open(&key, ID, &t, chunk, 9).unwrap_err().to_string();
        assert!(e.contains("chunk 1 ") && e.contains("appended"), "{e}");
        // Spliced from another backup under the same key (and under its own key).
        let other = seal(&key, "srv/db/other", &random(plain.len()), chunk, 7);
        let mut t = stored.clone();
        t[at(2)..at(3)].copy_from_slice(&other[at(2)..at(3)]);
        assert!(open(&key, ID, &t, chunk, 9).unwrap_err().to_string().contains("chunk 2 "));
        // Another backup id, another key, another chunk size in the header.
        assert!(open(&key, "srv/db/other", &stored, chunk, 9).unwrap_err().to_string().contains("chunk 0 "));
        let k2 = DataKey::generate().unwrap();
        assert!(open(&k2, ID, &stored, chunk, 9).is_err());
        assert!(open(&key, ID, &stored, chunk * 2, 9).unwrap_err().to_string().contains("header"));
    }

    #[test]
    fn nothing_is_handed_on_before_its_chunk_authenticated() {
        let key = DataKey::generate().unwrap();
        let plain = random(100);
        let mut stored = seal(&key, ID, &plain, 10, 100);
        let full = 10 + TAG_LEN;
        stored[HEADER_LEN + 3 * full + 2] ^= 0x80; // chunk 3
        let mut got = Vec::new();
        let mut o = Opener::new(&key, ID, 10);
        let r = o.push(&stored, &mut |b| {
            got.extend_from_slice(&b);
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(got, plain[..30], "exactly chunks 0..3 were handed on");
    }

    #[test]
    fn key_ids_parse() {
        let k = KeyId::parse("https://v.vault.azure.net/keys/backup-key").unwrap();
        assert_eq!(
            (k.vault_url.as_str(), k.name.as_str(), k.version.as_deref()),
            ("https://v.vault.azure.net", "backup-key", None)
        );
        let k = KeyId::parse("https://127.0.0.1:8443/keys/k/0123abcd").unwrap();
        assert_eq!(k.version.as_deref(), Some("0123abcd"));
        assert_eq!(k.to_string(), "https://127.0.0.1:8443/keys/k/0123abcd");
        assert_eq!(k.with_version("ff").to_string(), "https://127.0.0.1:8443/keys/k/ff");
        for bad in [
            "http://v/keys/k",
            "https://v/secrets/k",
            "https://v/keys/",
            "https://v/keys/a/b/c",
            "k",
            "https://v/keys/k?x=1",
        ] {
            assert!(KeyId::parse(bad).unwrap_err().to_string().contains("bad Key Vault key identifier"), "{bad}");
        }
    }

    #[test]
    fn the_key_never_prints_and_the_nonce_and_aad_are_as_documented() {
        let key = DataKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "DataKey(**redacted**)");
        assert_eq!(nonce(0x0102), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&header(0x0010_0000), b"PGVENC\x01\x01\x00\x10\x00\x00");
        let a = aad(&header(16), "ab", 3, true);
        assert_eq!(&a[12..], &[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 3, 1]);
    }
}
