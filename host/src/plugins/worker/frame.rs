//! Length-prefixed frames on a byte stream: a little-endian u32 length, then that many bytes
//! of postcard. One frame is one message; a writer holds its lock for the whole frame so
//! frames from several threads never interleave.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};

/// The largest frame either side accepts: far above any real message (a vocabulary of
/// logits, a batch of embeddings), far below what a corrupt length would make us allocate.
const MAX_FRAME: usize = 1 << 30;

/// Writes `message` as one frame (one `write_all` call on a buffer holding the whole frame).
pub fn write<W: Write, T: Serialize>(out: &mut W, message: &T) -> io::Result<()> {
    // Room for the length, then the payload in the same buffer.
    let buffer = postcard::to_extend(message, vec![0u8; 4])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(buffer.len() - 4)
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message too large"))?;
    let mut buffer = buffer;
    buffer[..4].copy_from_slice(&len.to_le_bytes());
    out.write_all(&buffer)
}

/// Reads one frame; `Ok(None)` at a clean end of stream (the peer closed between frames).
pub fn read<R: Read, T: DeserializeOwned>(input: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    postcard::from_bytes(&payload)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_huge_length_is_refused() {
        let mut bytes = Vec::new();
        write(&mut bytes, &(7u64, "hello".to_string())).expect("write");
        write(&mut bytes, &vec![1.5f32; 3]).expect("write");
        let mut input = bytes.as_slice();
        let first: Option<(u64, String)> = read(&mut input).expect("read");
        assert_eq!(first, Some((7, "hello".to_string())));
        let second: Option<Vec<f32>> = read(&mut input).expect("read");
        assert_eq!(second, Some(vec![1.5; 3]));
        let end: Option<Vec<f32>> = read(&mut input).expect("read");
        assert_eq!(end, None);
        let huge = u32::MAX.to_le_bytes();
        let err = read::<_, Vec<u8>>(&mut huge.as_slice()).expect_err("too large");
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
