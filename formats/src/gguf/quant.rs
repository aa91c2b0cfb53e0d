//! ggml's Q8_0 block format: 32 values as an f16 scale and 32 signed bytes.

use half::f16;

/// Values per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block (f16 scale + 32 x i8).
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// ggml's reference Q8_0 quantisation: per block of 32, scale = max |x| / 127 and
/// q = round(x / scale). `values.len()` should be a multiple of 32 (the writer checks that a
/// tensor's rows are); a shorter last block is written short.
pub fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len().div_ceil(Q8_0_BLOCK) * Q8_0_BLOCK_BYTES);
    for block in values.chunks(Q8_0_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // An all-zero block has scale 0; its values stay 0 instead of dividing by zero.
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // The clamp keeps the cast in range; `as` on a value in [-127, 127] is exact.
        out.extend(
            block
                .iter()
                .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
}

/// Q8_0 blocks back to f32 (a partial trailing block is ignored), to check the encoder.
#[cfg(test)]
pub(crate) fn dequantize_q8_0(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .flat_map(|b| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            b[2..].iter().map(move |&q| f32::from(q as i8) * d)
        })
        .collect()
}
