use std::io::Cursor;

use super::quant::dequantize_q8_0;
use super::*;

/// Deterministic values in [-scale, scale].
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn every_value_type() -> Vec<(String, MetaValue)> {
    let arrays = [
        MetaArray::U8(vec![0, 255]),
        MetaArray::I8(vec![-128, 127]),
        MetaArray::U16(vec![65535]),
        MetaArray::I16(vec![-2, 3]),
        MetaArray::U32(vec![u32::MAX, 7]),
        MetaArray::I32(vec![-1, 1, 2]),
        MetaArray::F32(vec![0.5, -1.25]),
        MetaArray::Bool(vec![true, false, true]),
        MetaArray::Str(vec!["<s>".into(), "".into(), "héllo".into()]),
        MetaArray::U64(vec![u64::MAX]),
        MetaArray::I64(vec![i64::MIN]),
        MetaArray::F64(vec![std::f64::consts::PI]),
        MetaArray::Str(vec![]),
    ];
    let mut meta = vec![
        ("u8".to_string(), MetaValue::U8(200)),
        ("i8".into(), MetaValue::I8(-100)),
        ("u16".into(), MetaValue::U16(60000)),
        ("i16".into(), MetaValue::I16(-30000)),
        ("u32".into(), MetaValue::U32(4_000_000_000)),
        ("i32".into(), MetaValue::I32(-2_000_000_000)),
        ("f32".into(), MetaValue::F32(1e-5)),
        ("bool".into(), MetaValue::Bool(true)),
        ("str".into(), MetaValue::Str("llama".into())),
        ("u64".into(), MetaValue::U64(u64::MAX)),
        ("i64".into(), MetaValue::I64(-5)),
        ("f64".into(), MetaValue::F64(-0.125)),
    ];
    for (i, a) in arrays.into_iter().enumerate() {
        meta.push((format!("array.{i}"), MetaValue::Array(a)));
    }
    meta
}

fn specs() -> Vec<(TensorSpec, Vec<f32>)> {
    vec![
        (
            TensorSpec::from_shape("a.f32", &[3, 5], GgmlType::F32),
            noise(15, 1, 2.0),
        ),
        (
            TensorSpec::new("b.f16", vec![7], GgmlType::F16),
            noise(7, 2, 1.0),
        ),
        (
            TensorSpec::new("c.q8_0", vec![64, 3], GgmlType::Q8_0),
            noise(192, 3, 0.05),
        ),
    ]
}

fn write(meta: &[(String, MetaValue)], tensors: &[(TensorSpec, Vec<f32>)]) -> Vec<u8> {
    let borrowed: Vec<_> = tensors
        .iter()
        .map(|(s, v)| (s.clone(), v.as_slice()))
        .collect();
    write_to_vec(meta, &borrowed).expect("write")
}

fn write_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).expect("write file");
    (dir, path)
}

/// Half a quantisation step of the block, plus the f16 rounding of the scale.
fn assert_q8_0_close(orig: &[f32], back: &[f32]) {
    assert_eq!(orig.len(), back.len());
    for (block, (o, d)) in orig.chunks(32).zip(back.chunks(32)).enumerate() {
        let amax = o.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tolerance = amax / 127.0 * 0.5 + amax * 1e-3;
        for (o, d) in o.iter().zip(d) {
            assert!((o - d).abs() <= tolerance, "block {block}: {o} vs {d}");
        }
    }
}

#[test]
fn metadata_and_tensors_round_trip() {
    let meta = every_value_type();
    let tensors = specs();
    let bytes = write(&meta, &tensors);
    assert_eq!(bytes.len() % 32, 0);
    let header = read_header(Cursor::new(&bytes)).expect("read");
    assert_eq!(header.version, 3);
    assert_eq!(header.metadata, meta, "every value, in the order written");
    assert_eq!(header.alignment, 32);
    assert_eq!(header.data_offset % 32, 0);
    let infos: Vec<_> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.clone(), t.ggml_type))
        .collect();
    assert_eq!(
        infos,
        vec![
            ("a.f32", vec![5, 3], GgmlType::F32),
            ("b.f16", vec![7], GgmlType::F16),
            ("c.q8_0", vec![64, 3], GgmlType::Q8_0),
        ]
    );
    assert_eq!(header.tensors[0].shape(), vec![3, 5]);
    assert_eq!(
        header.tensors[1].offset, 64,
        "F32 tensor of 60 bytes padded to 64"
    );
    assert_eq!(
        header.tensors[2].offset, 96,
        "F16 tensor of 14 bytes padded to 32"
    );
    assert_eq!(header.tensors[2].byte_size(), Some(6 * 34));
    assert_eq!(
        bytes.len() as u64,
        header.required_file_len().div_ceil(32) * 32
    );
    header
        .check_data_section(bytes.len() as u64)
        .expect("complete");

    let mut file = Cursor::new(&bytes);
    let a = read_tensor_f32(&mut file, &header, &header.tensors[0]).expect("f32");
    assert_eq!(a, tensors[0].1, "F32 is exact");
    let b = read_tensor_f32(&mut file, &header, &header.tensors[1]).expect("f16");
    for (orig, back) in tensors[1].1.iter().zip(&b) {
        assert_eq!(*back, half::f16::from_f32(*orig).to_f32());
    }
    let q = &header.tensors[2];
    let start = (header.data_offset + q.offset) as usize;
    let raw = &bytes[start..start + 6 * 34];
    assert_q8_0_close(&tensors[2].1, &dequantize_q8_0(raw));
    assert!(matches!(
        read_tensor_f32(&mut file, &header, q),
        Err(GgufError::TensorType {
            ggml_type: GgmlType::Q8_0,
            ..
        })
    ));
}

#[test]
fn typed_getters_read_what_files_use() {
    let bytes = write(&every_value_type(), &[]);
    let header = read_header(Cursor::new(&bytes)).expect("read");
    assert_eq!(header.get_u64("u32"), Some(4_000_000_000));
    assert_eq!(header.get_u64("u16"), Some(60000));
    assert_eq!(header.get_u64("i32"), None, "negative is not a u64");
    assert_eq!(header.get("i8").and_then(MetaValue::as_i64), Some(-100));
    assert_eq!(header.get_f32("f64"), Some(-0.125));
    assert_eq!(header.get_str("str"), Some("llama"));
    assert_eq!(header.get_str("u8"), None);
    let strs = header.get("array.8").and_then(MetaValue::as_array);
    assert_eq!(
        strs.and_then(MetaArray::as_strs).map(<[String]>::len),
        Some(3)
    );
    assert_eq!(header.required_file_len(), 0, "no tensors, no data section");
}

#[test]
fn a_custom_alignment_is_used_for_the_data_section() {
    let meta = vec![(ALIGNMENT_KEY.to_string(), MetaValue::U32(64))];
    let tensors = vec![
        (
            TensorSpec::new("x", vec![3], GgmlType::F32),
            vec![1.0, 2.0, 3.0],
        ),
        (TensorSpec::new("y", vec![2], GgmlType::F32), vec![4.0, 5.0]),
    ];
    let bytes = write(&meta, &tensors);
    let header = read_header(Cursor::new(&bytes)).expect("read");
    assert_eq!(header.alignment, 64);
    assert_eq!(header.data_offset % 64, 0);
    assert_eq!(header.tensors[1].offset, 64);
    assert_eq!(bytes.len() % 64, 0);
    let y = read_tensor_f32(&mut Cursor::new(&bytes), &header, &header.tensors[1]);
    assert_eq!(y.expect("y"), vec![4.0, 5.0]);
}

#[test]
fn files_round_trip_and_a_cut_data_section_is_truncated() {
    let bytes = write(&every_value_type(), &specs()[..2]);
    let (_dir, path) = write_file(&bytes);
    let (header, tensors) = read_file_f32(&path).expect("read");
    assert_eq!(header.tensors.len(), 2);
    assert_eq!(tensors[0], specs()[0].1);

    let cut = &bytes[..bytes.len() - 40];
    let (_dir, path) = write_file(cut);
    let header = read_file_header(&path).expect("the header is intact");
    let err = header.check_data_section(cut.len() as u64).unwrap_err();
    assert!(
        matches!(err, GgufError::Truncated { actual, needed } if actual == cut.len() as u64 && needed > actual),
        "{err}"
    );
    let err = read_file_f32(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("model.gguf") && message.contains("truncated"),
        "{message}"
    );
    match err {
        GgufError::File { path: named, error } => {
            assert_eq!(named, path);
            assert!(matches!(*error, GgufError::Truncated { .. }), "{error}");
        }
        other => panic!("expected an error naming the file, got {other}"),
    }
}

#[test]
fn a_header_cut_short_is_corrupt_and_says_truncated() {
    let bytes = write(&every_value_type(), &specs());
    let header_len = read_header(Cursor::new(&bytes)).expect("read").data_offset as usize;
    for keep in [10, 24, 60, header_len / 2, header_len - 40] {
        let err = read_header(Cursor::new(&bytes[..keep])).unwrap_err();
        assert!(matches!(err, GgufError::Corrupt(_)), "{keep}: {err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        let bounded = read_header_bounded(Cursor::new(&bytes[..keep]), keep as u64);
        assert!(matches!(bounded, Err(GgufError::Corrupt(_))), "{keep}");
    }
}

#[test]
fn bad_magic_and_old_versions_are_refused() {
    let err = read_header(Cursor::new(b"hello, this is not a model\n")).unwrap_err();
    assert!(matches!(err, GgufError::NotGguf), "{err}");
    assert!(matches!(
        read_header(Cursor::new(b"GG")),
        Err(GgufError::NotGguf)
    ));
    let mut v1 = b"GGUF".to_vec();
    v1.extend(1u32.to_le_bytes());
    v1.extend([0u8; 16]);
    assert!(matches!(
        read_header(Cursor::new(&v1)),
        Err(GgufError::UnsupportedVersion(1))
    ));
}

/// A header with one key whose string value claims `len` bytes.
fn header_with_string_len(len: u64) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(4u64.to_le_bytes());
    bytes.extend(b"name");
    bytes.extend(ValueType::String.code().to_le_bytes());
    bytes.extend(len.to_le_bytes());
    bytes.extend(b"abc");
    bytes
}

#[test]
fn absurd_lengths_are_corrupt_without_allocating_them() {
    // Unbounded: over the sanity bound (allocating it would abort the process).
    let err = read_header(Cursor::new(header_with_string_len(1 << 60))).unwrap_err();
    assert!(
        matches!(&err, GgufError::Corrupt(m) if m.contains("implausible")),
        "{err}"
    );
    // Bounded by the file: more than the file holds.
    let bytes = header_with_string_len(1 << 29);
    let err = read_header_bounded(Cursor::new(&bytes), bytes.len() as u64).unwrap_err();
    assert!(
        matches!(&err, GgufError::Corrupt(m) if m.contains("bytes of the file are left")),
        "{err}"
    );
    // Unbounded but plausible: reads to the end of the data and reports it cut short.
    let err = read_header(Cursor::new(header_with_string_len(1 << 29))).unwrap_err();
    assert!(matches!(err, GgufError::Corrupt(_)), "{err}");
    // Absurd counts.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    let err = read_header(Cursor::new(&bytes)).unwrap_err();
    assert!(matches!(err, GgufError::Corrupt(_)), "{err}");
}

#[test]
fn unknown_value_types_and_duplicate_keys_are_corrupt() {
    let mut bytes = header_with_string_len(3);
    let at = bytes.len() - 3 - 8 - 4;
    bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let err = read_header(Cursor::new(&bytes)).unwrap_err();
    assert!(
        matches!(&err, GgufError::Corrupt(m) if m.contains("unknown value type 99")),
        "{err}"
    );
    let meta = vec![
        ("k".to_string(), MetaValue::U8(1)),
        ("k".to_string(), MetaValue::U8(2)),
    ];
    let err = read_header(Cursor::new(write(&meta, &[]))).unwrap_err();
    assert!(
        matches!(&err, GgufError::Corrupt(m) if m.contains("twice")),
        "{err}"
    );
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.gguf");
    let err = read_file_header(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    assert!(
        matches!(err.into_without_path(), GgufError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    );
    let (_dir, path) = write_file(b"not gguf at all");
    let err = read_file_header(&path).unwrap_err();
    assert!(matches!(err.into_without_path(), GgufError::NotGguf));
}

#[test]
fn the_writer_refuses_what_it_cannot_write() {
    let write_one = |spec: TensorSpec, values: &[f32]| {
        write_to_vec::<&str>(&[], &[(spec, values)]).unwrap_err()
    };
    let err = write_one(
        TensorSpec::new("q", vec![33, 2], GgmlType::Q8_0),
        &[0.0; 66],
    );
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let err = write_one(TensorSpec::new("q", vec![4], GgmlType::Q4_0), &[0.0; 4]);
    assert!(err.to_string().contains("Q4_0 cannot be written"), "{err}");
    let err = write_one(TensorSpec::new("f", vec![4], GgmlType::F32), &[0.0; 3]);
    assert!(err.to_string().contains("but 3 were given"), "{err}");
    let spec = TensorSpec::new("f", vec![1], GgmlType::F32);
    let writer = GgufWriter::new(Vec::new(), &[] as &[(&str, MetaValue)], vec![spec]);
    let err = writer.expect("header").finish().map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("no data was written"), "{err}");
}

#[test]
fn q8_0_round_trips_within_half_a_step_per_block() {
    let mut values = noise(256, 42, 0.035);
    values[40..72].fill(0.0); // an all-zero block must not divide by zero
    let mut bytes = Vec::new();
    quantize_q8_0(&values, &mut bytes);
    assert_eq!(bytes.len(), 8 * Q8_0_BLOCK_BYTES);
    let back = dequantize_q8_0(&bytes);
    assert_q8_0_close(&values, &back);
    assert!(back[32..64].iter().skip(8).all(|&v| v == 0.0));
}

/// A file whose `n` F32 tensors of 1024 values all start at offset 0 of one 4 KiB data
/// section (found by reasoning over the fuzz target: each tensor alone fits the file).
fn overlapping_tensors(n: usize) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend((n as u64).to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    for i in 0..n {
        let name = format!("t{i}");
        bytes.extend((name.len() as u64).to_le_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(1024u64.to_le_bytes());
        bytes.extend(GgmlType::F32.0.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
    }
    bytes.resize(bytes.len().div_ceil(32) * 32, 0);
    bytes.extend(vec![0u8; 4096]);
    bytes
}

#[test]
fn overlapping_tensors_cannot_expand_a_small_file() {
    // 500 tensors over one 4 KiB section: 2 MB of f32 from a 15 KB file (before the fix,
    // read_file_f32 returned all of it; a larger file multiplies further).
    let (_dir, path) = write_file(&overlapping_tensors(500));
    let err = read_file_f32(&path).unwrap_err().into_without_path();
    assert!(
        matches!(
            err,
            GgufError::TensorDataTooLarge {
                declared: 2_048_000,
                available: 4096
            }
        ),
        "{err}"
    );
    // One tensor over the same bytes reads.
    let (_dir, path) = write_file(&overlapping_tensors(1));
    let (_, tensors) = read_file_f32(&path).expect("one tensor fits");
    assert_eq!(tensors[0].len(), 1024);
}

#[test]
fn duplicate_tensor_names_are_corrupt() {
    let tensors = vec![
        (TensorSpec::new("t", vec![2], GgmlType::F32), vec![1.0, 2.0]),
        (TensorSpec::new("t", vec![2], GgmlType::F32), vec![3.0, 4.0]),
    ];
    let err = read_header(Cursor::new(write(&[], &tensors))).unwrap_err();
    assert!(
        matches!(&err, GgufError::Corrupt(m) if m.contains("tensor t appears twice")),
        "{err}"
    );
}

#[test]
fn an_alignment_that_is_not_a_small_power_of_two_is_refused_by_reader_and_writer() {
    let bad = [
        (MetaValue::U32(0), "is 0"),
        (MetaValue::U32(48), "is 48"),
        (MetaValue::U64(1 << 40), "is 1099511627776"),
        (MetaValue::I32(-32), "is -32"),
        (MetaValue::F32(32.0), "is a F32 value"),
    ];
    for (value, found) in bad {
        let meta = [(ALIGNMENT_KEY, value.clone())];
        let err = write_to_vec(&meta, &[]).unwrap_err();
        assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
        // The same header, written by hand (the writer refuses it).
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend((ALIGNMENT_KEY.len() as u64).to_le_bytes());
        bytes.extend(ALIGNMENT_KEY.as_bytes());
        super::write::put_value(&mut bytes, &value);
        let err = read_header(Cursor::new(&bytes)).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, GgufError::BadAlignment { .. }) && message.contains(found),
            "{message}"
        );
        assert!(
            message.contains("power of two no larger than 1048576"),
            "{message}"
        );
    }
    let header = read_header(Cursor::new(
        write_to_vec(&[(ALIGNMENT_KEY, MetaValue::U64(MAX_ALIGNMENT))], &[]).expect("write"),
    ))
    .expect("the largest alignment reads");
    assert_eq!(header.alignment, MAX_ALIGNMENT);
}
