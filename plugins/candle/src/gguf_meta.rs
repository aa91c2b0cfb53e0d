//! Lenient typed access to GGUF metadata values (writers differ in integer widths).

use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

pub type Metadata = HashMap<String, Value>;

/// Any integer value (or bool) as u64; negative or non-integer values are `None`.
pub fn uint(md: &Metadata, key: &str) -> Option<u64> {
    match md.get(key)? {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        Value::Bool(v) => Some(u64::from(*v)),
        _ => None,
    }
}

/// A token id: an integer that fits in u32 (the `0xFFFFFFFF` "none" marker is `None`).
pub fn token_id(md: &Metadata, key: &str) -> Option<u32> {
    uint(md, key)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v != u32::MAX)
}

pub fn float(md: &Metadata, key: &str) -> Option<f64> {
    match md.get(key)? {
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => uint(md, key).map(|v| v as f64),
    }
}

pub fn boolean(md: &Metadata, key: &str) -> Option<bool> {
    match md.get(key)? {
        Value::Bool(v) => Some(*v),
        _ => uint(md, key).map(|v| v != 0),
    }
}

pub fn string<'a>(md: &'a Metadata, key: &str) -> Option<&'a str> {
    match md.get(key)? {
        Value::String(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An array of strings; `None` if absent, `Err(index)` if an element is not a string.
pub fn string_array(md: &Metadata, key: &str) -> Option<Result<Vec<String>, usize>> {
    let Value::Array(items) = md.get(key)? else {
        return Some(Err(0));
    };
    Some(
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(i),
            })
            .collect(),
    )
}

/// An array of numbers as f32; `None` if absent or not numeric.
pub fn f32_array(md: &Metadata, key: &str) -> Option<Vec<f32>> {
    let Value::Array(items) = md.get(key)? else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })
        .collect()
}

/// An array of integers as i64; `None` if absent or not integral.
pub fn int_array(md: &Metadata, key: &str) -> Option<Vec<i64>> {
    let Value::Array(items) = md.get(key)? else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::U8(x) => Some(i64::from(*x)),
            Value::I8(x) => Some(i64::from(*x)),
            Value::U16(x) => Some(i64::from(*x)),
            Value::I16(x) => Some(i64::from(*x)),
            Value::U32(x) => Some(i64::from(*x)),
            Value::I32(x) => Some(i64::from(*x)),
            Value::I64(x) => Some(*x),
            Value::U64(x) => i64::try_from(*x).ok(),
            _ => None,
        })
        .collect()
}
