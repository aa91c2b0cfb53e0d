//! GGUF writer: metadata in the order given, F32/F16/Q8_0 tensors streamed one at a time.

use std::io::Write;

use half::f16;

use super::{
    alignment_of, quantize_q8_0, GgmlType, GgufError, MetaArray, MetaValue, ALIGNMENT_KEY, MAGIC,
    MAX_DIMS, Q8_0_BLOCK, Q8_0_BLOCK_BYTES, VERSION,
};

/// A tensor to write: its name, GGUF dimensions and storage type (F32, F16 or Q8_0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// GGUF order (`ne`): the innermost dimension first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ggml_type: GgmlType) -> Self {
        TensorSpec {
            name: name.into(),
            dims,
            ggml_type,
        }
    }

    /// A tensor of row-major `shape` (`[rows, cols]`, as in PyTorch).
    pub fn from_shape(name: impl Into<String>, shape: &[usize], ggml_type: GgmlType) -> Self {
        let dims = shape.iter().rev().map(|d| *d as u64).collect();
        Self::new(name, dims, ggml_type)
    }

    fn invalid(&self, reason: impl Into<String>) -> GgufError {
        GgufError::InvalidTensor {
            tensor: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn element_count(&self) -> Result<u64, GgufError> {
        self.dims
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .ok_or_else(|| self.invalid("its size overflows"))
    }

    /// Bytes of data, after checking the spec is writable.
    fn byte_size(&self) -> Result<u64, GgufError> {
        if self.dims.len() > MAX_DIMS as usize {
            return Err(self.invalid(format!("it has more than {MAX_DIMS} dimensions")));
        }
        let n = self.element_count()?;
        let per_value = match self.ggml_type {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q8_0 => {
                let row = self.dims.first().copied().unwrap_or(1);
                if row % Q8_0_BLOCK as u64 != 0 {
                    return Err(self.invalid(format!(
                        "Q8_0 needs rows whose length is a multiple of {Q8_0_BLOCK}; this one has {row}"
                    )));
                }
                return Ok(n / Q8_0_BLOCK as u64 * Q8_0_BLOCK_BYTES as u64);
            }
            other => {
                return Err(self.invalid(format!(
                    "{other} cannot be written (only F32, F16 and Q8_0 can)"
                )))
            }
        };
        n.checked_mul(per_value)
            .ok_or_else(|| self.invalid("its size overflows"))
    }
}

/// Writes a GGUF v3 file: [`GgufWriter::new`] writes the header, then
/// [`GgufWriter::write_tensor`] once per declared tensor, in order, then
/// [`GgufWriter::finish`]. The data section and every tensor in it are aligned to
/// `general.alignment` when the metadata sets it, else to 32 bytes.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    tensors: Vec<(TensorSpec, u64)>,
    next: usize,
    buf: Vec<u8>,
}

impl<W: Write> GgufWriter<W> {
    /// Checks the tensors and writes the header: metadata in the order given, then the tensor
    /// table.
    pub fn new<K: AsRef<str>>(
        mut out: W,
        metadata: &[(K, MetaValue)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self, GgufError> {
        // The reader's rule, so that what is written reads back.
        let alignment = alignment_of(
            metadata
                .iter()
                .find(|(k, _)| k.as_ref() == ALIGNMENT_KEY)
                .map(|(_, v)| v),
        )?;
        let sized = tensors
            .into_iter()
            .map(|t| t.byte_size().map(|size| (t, size)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(sized.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_str(&mut header, key.as_ref());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for (spec, size) in &sized {
            put_str(&mut header, &spec.name);
            header.extend_from_slice(&(spec.dims.len() as u32).to_le_bytes());
            for d in &spec.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&spec.ggml_type.0.to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(size.div_ceil(alignment) * alignment)
                .ok_or_else(|| spec.invalid("the data section's size overflows"))?;
        }
        pad(&mut header, alignment);
        out.write_all(&header)?;
        Ok(GgufWriter {
            out,
            alignment,
            tensors: sized,
            next: 0,
            buf: Vec::new(),
        })
    }

    /// Writes the next declared tensor's data, encoding `values` to its type.
    pub fn write_tensor(&mut self, values: &[f32]) -> Result<(), GgufError> {
        let Some((spec, size)) = self.tensors.get(self.next) else {
            return Err(GgufError::InvalidTensor {
                tensor: format!("#{}", self.next),
                reason: format!("only {} tensors were declared", self.tensors.len()),
            });
        };
        if values.len() as u64 != spec.element_count()? {
            return Err(spec.invalid(format!(
                "its dimensions {:?} hold {} values, but {} were given",
                spec.dims,
                spec.element_count()?,
                values.len()
            )));
        }
        self.buf.clear();
        self.buf.reserve(*size as usize + self.alignment as usize);
        match spec.ggml_type {
            GgmlType::F16 => values
                .iter()
                .for_each(|v| self.buf.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            GgmlType::Q8_0 => quantize_q8_0(values, &mut self.buf),
            _ => values
                .iter()
                .for_each(|v| self.buf.extend_from_slice(&v.to_le_bytes())),
        }
        // Every tensor's size is padded, so the next one starts aligned.
        pad(&mut self.buf, self.alignment);
        self.out.write_all(&self.buf)?;
        self.next += 1;
        Ok(())
    }

    /// Checks every declared tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some((spec, _)) = self.tensors.get(self.next) {
            return Err(spec.invalid("no data was written for it"));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A complete GGUF file in memory (for small files such as adapters).
pub fn write_to_vec<K: AsRef<str>>(
    metadata: &[(K, MetaValue)],
    tensors: &[(TensorSpec, &[f32])],
) -> Result<Vec<u8>, GgufError> {
    let specs = tensors.iter().map(|(spec, _)| spec.clone()).collect();
    let mut writer = GgufWriter::new(Vec::new(), metadata, specs)?;
    for (_, values) in tensors {
        writer.write_tensor(values)?;
    }
    writer.finish()
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = out.len() as u64;
    let padded = len.div_ceil(alignment) * alignment;
    out.resize(padded as usize, 0);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
    out.extend_from_slice(&value.value_type().code().to_le_bytes());
    match value {
        MetaValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, array: &MetaArray) {
    out.extend_from_slice(&array.item_type().code().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    fn all<T, const N: usize>(out: &mut Vec<u8>, items: &[T], bytes: impl Fn(&T) -> [u8; N]) {
        items.iter().for_each(|v| out.extend_from_slice(&bytes(v)));
    }
    match array {
        MetaArray::U8(v) => out.extend_from_slice(v),
        MetaArray::I8(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::U16(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::I16(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::U32(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::I32(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::F32(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::Bool(v) => all(out, v, |x| [u8::from(*x)]),
        MetaArray::Str(v) => v.iter().for_each(|s| put_str(out, s)),
        MetaArray::U64(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::I64(v) => all(out, v, |x| x.to_le_bytes()),
        MetaArray::F64(v) => all(out, v, |x| x.to_le_bytes()),
    }
}
