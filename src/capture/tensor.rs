//! Dense tensors read from dump files: `.npy`, `.npz` and `.safetensors`
//! (the `.pt` reader in [`super::pt`] produces the same type).
//!
//! A [`Tensor`] owns (a share of) the bytes of one input file; nothing is
//! converted until a caller asks for values, so memory stays about one input
//! file. Every reader checks sizes against the header before slicing and
//! reports what is wrong with the file name.
//!
//! `.npy`: format versions 1-3, C order only, little-endian or
//! byte-order-free dtypes: `<f4 <f2 <f8 <i8 <i4 <i2 |i1 |u1 <u2 |b1`, and
//! bf16 by the ml_dtypes convention (a 2-byte void, `<V2` or `|V2`, or the
//! descr `bfloat16`).

use super::CaptureError;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::Bool => "bool",
        }
    }
}

/// A dense, C-order, little-endian tensor over a shared byte buffer.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    buf: Arc<Vec<u8>>,
    offset: usize,
}

impl Tensor {
    /// `buf[offset..]` must hold at least `numel * size` bytes: checked.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        buf: Arc<Vec<u8>>,
        offset: usize,
        path: &Path,
    ) -> Result<Self, CaptureError> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| CaptureError::input(path, format!("shape {shape:?} overflows")))?;
        let end = offset
            .checked_add(numel)
            .ok_or_else(|| CaptureError::input(path, "tensor offset overflows"))?;
        if end > buf.len() {
            return Err(CaptureError::input(
                path,
                format!(
                    "truncated: a {} tensor of shape {shape:?} needs {numel} bytes at offset {offset}, the data has {}",
                    dtype.name(),
                    buf.len().saturating_sub(offset)
                ),
            ));
        }
        Ok(Self {
            dtype,
            shape,
            buf,
            offset,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.numel() * self.dtype.size()]
    }

    /// Values `start..start+out.len()` (flat index) as f32.
    pub fn f32_range_into(&self, start: usize, out: &mut [f32]) {
        let sz = self.dtype.size();
        let b = &self.bytes()[start * sz..(start + out.len()) * sz];
        match self.dtype {
            DType::F32 if cfg!(target_endian = "little") => {
                // SAFETY: `b` holds exactly out.len() * 4 bytes (sliced
                // above), `out` is a distinct &mut buffer of that many bytes,
                // and any bit pattern is a valid f32 on a little-endian host.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        b.as_ptr(),
                        out.as_mut_ptr() as *mut u8,
                        out.len() * 4,
                    );
                }
            }
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            DType::F64 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().unwrap()) as f32;
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.int_at(start + i) as f32;
                }
            }
        }
    }

    /// The values as an f32 slice without copying, when the tensor is f32,
    /// the host little-endian and the data 4-byte aligned.
    pub fn as_f32(&self) -> Option<&[f32]> {
        let b = self.bytes();
        if self.dtype != DType::F32
            || cfg!(target_endian = "big")
            || b.as_ptr() as usize % std::mem::align_of::<f32>() != 0
        {
            return None;
        }
        // SAFETY: the pointer is f32-aligned (checked), `b.len()` is
        // numel * 4 so the slice covers exactly the tensor's bytes, every bit
        // pattern is a valid f32, and the slice borrows `self`, which keeps
        // the buffer alive and unmodified (it is never mutated once shared).
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) })
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.numel()];
        self.f32_range_into(0, &mut v);
        v
    }

    fn int_at(&self, i: usize) -> i64 {
        let sz = self.dtype.size();
        let c = &self.bytes()[i * sz..(i + 1) * sz];
        match self.dtype {
            DType::I64 => i64::from_le_bytes(c.try_into().unwrap()),
            DType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as i64,
            DType::I16 => i16::from_le_bytes(c.try_into().unwrap()) as i64,
            DType::U16 => u16::from_le_bytes(c.try_into().unwrap()) as i64,
            DType::I8 => c[0] as i8 as i64,
            DType::U8 | DType::Bool => c[0] as i64,
            DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as i64,
            DType::F64 => f64::from_le_bytes(c.try_into().unwrap()) as i64,
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32() as i64,
            DType::BF16 => f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as i64,
        }
    }

    /// Integer values; float tensors are refused (ids must be integers).
    pub fn to_i64(&self, path: &Path, what: &str) -> Result<Vec<i64>, CaptureError> {
        if self.dtype.is_float() {
            return Err(CaptureError::input(
                path,
                format!(
                    "{what}: expected an integer tensor, found {}",
                    self.dtype.name()
                ),
            ));
        }
        Ok((0..self.numel()).map(|i| self.int_at(i)).collect())
    }

    /// The single value of a 0-d (or 1-element) tensor.
    pub fn scalar_i64(&self) -> Option<i64> {
        (self.numel() == 1).then(|| self.int_at(0))
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, CaptureError> {
    std::fs::read(path).map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))
}

/// Parse one `.npy` image held in `buf`.
pub fn parse_npy(buf: Arc<Vec<u8>>, path: &Path) -> Result<Tensor, CaptureError> {
    let (dtype, shape, data_start) = npy_header(&buf, path)?;
    Tensor::new(dtype, shape, buf.clone(), data_start, path)
}

/// Dtype, shape and data offset from the start of a `.npy` image (`b` may
/// stop after the header).
fn npy_header(b: &[u8], path: &Path) -> Result<(DType, Vec<usize>, usize), CaptureError> {
    let bad = |m: String| CaptureError::input(path, format!("not a valid .npy file: {m}"));
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (hlen, hstart): (usize, usize) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let data_start = hstart
        .checked_add(hlen)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(&b[hstart..data_start])
        .map_err(|_| bad("header is not text".into()))?;
    let descr = dict_str(header, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let fortran = dict_raw(header, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    if fortran.starts_with("True") {
        return Err(CaptureError::input(
            path,
            "Fortran-order arrays are not supported: save with np.ascontiguousarray",
        ));
    }
    let shape_txt = dict_raw(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let shape = parse_shape(shape_txt).ok_or_else(|| bad(format!("bad shape '{shape_txt}'")))?;
    let dtype = match descr.as_str() {
        "<f4" => DType::F32,
        "<f2" => DType::F16,
        "<f8" => DType::F64,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "<u2" => DType::U16,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "|b1" => DType::Bool,
        "<V2" | "|V2" | "bfloat16" | "<bfloat16" => DType::BF16,
        d if d.starts_with('>') => {
            return Err(CaptureError::input(
                path,
                format!("big-endian dtype '{d}' is not supported"),
            ))
        }
        d => {
            return Err(CaptureError::input(
                path,
                format!("unsupported dtype '{d}' (f32, f16, bf16, f64 or integers)"),
            ))
        }
    };
    Ok((dtype, shape, data_start))
}

/// The dtype of a `.npy` file, from its header alone (format detection
/// should not read a multi-gigabyte array).
pub fn read_npy_dtype(path: &Path) -> Result<DType, CaptureError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))?;
    let mut head = Vec::new();
    // 64 KiB covers any header numpy writes (they are padded to 64 bytes)
    f.take(1 << 16)
        .read_to_end(&mut head)
        .map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))?;
    npy_header(&head, path).map(|(d, _, _)| d)
}

/// Value text after `'key':` in a Python dict literal, up to the next
/// top-level comma or the closing brace.
fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let at = header.find(&pat1).or_else(|| header.find(&pat2))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let raw = dict_raw(header, key)?;
    let q = raw.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let inner = &raw[1..];
    Some(inner[..inner.find(q)?].to_string())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

/// Read a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, CaptureError> {
    parse_npy(Arc::new(read_all(path)?), path)
}

/// Read every array of a `.npz` archive (stored or deflated), by name
/// without the `.npy` suffix, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, CaptureError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| CaptureError::input(path, format!("not a valid .npz (zip) file: {e}")))?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut entry = z
            .by_index(i)
            .map_err(|e| CaptureError::input(path, format!("bad .npz entry {i}: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .map_err(|e| CaptureError::input(path, format!("bad .npz entry {i}: {e}")))?;
        let Some(stem) = name.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity((entry.size() as usize).min(1 << 26));
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| CaptureError::input(path, format!("entry '{name}': {e}")))?;
        let t = parse_npy(Arc::new(bytes), path).map_err(|e| match e {
            CaptureError::Input { path, msg } => CaptureError::Input {
                path,
                msg: format!("entry '{name}': {msg}"),
            },
            other => other,
        })?;
        out.push((stem.to_string(), t));
    }
    Ok(out)
}

/// Read every tensor of a `.safetensors` file, in header order.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, CaptureError> {
    let buf = Arc::new(read_all(path)?);
    parse_safetensors(buf, path)
}

pub fn parse_safetensors(
    buf: Arc<Vec<u8>>,
    path: &Path,
) -> Result<Vec<(String, Tensor)>, CaptureError> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| CaptureError::input(path, format!("not a valid .safetensors file: {e}")))?;
    let base = buf.as_ptr() as usize;
    let mut names: Vec<(usize, String, DType, Vec<usize>)> = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::U16 => DType::U16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => {
                return Err(CaptureError::input(
                    path,
                    format!("tensor '{name}': unsupported dtype {other:?}"),
                ))
            }
        };
        let off = view.data().as_ptr() as usize - base;
        names.push((off, name, dtype, view.shape().to_vec()));
    }
    names.sort_by_key(|x| x.0);
    names
        .into_iter()
        .map(|(off, name, dtype, shape)| {
            Ok((name, Tensor::new(dtype, shape, buf.clone(), off, path)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let shape_txt = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut h =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn npy_f32_bf16_f16() {
        let p = Path::new("x.npy");
        let vals = [1.5f32, -2.0, 0.25, 3.0];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse_npy(Arc::new(npy_bytes("<f4", &[2, 2], &data)), p).unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.to_f32(), vals);
        let bf: Vec<u8> = vals
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let t = parse_npy(Arc::new(npy_bytes("|V2", &[4], &bf)), p).unwrap();
        assert_eq!(t.to_f32(), vals);
        let h: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let t = parse_npy(Arc::new(npy_bytes("<f2", &[4], &h)), p).unwrap();
        assert_eq!(t.to_f32(), vals);
    }

    #[test]
    fn npy_truncated_and_fortran_are_refused() {
        let p = Path::new("bad.npy");
        let data = vec![0u8; 12];
        let e = parse_npy(Arc::new(npy_bytes("<f4", &[2, 2], &data)), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.npy") && e.contains("truncated"), "{e}");
        let mut b = npy_bytes("<f4", &[1], &[0; 4]);
        let at = b.windows(5).position(|w| w == b"False").unwrap();
        b[at..at + 5].copy_from_slice(b"True ");
        let e = parse_npy(Arc::new(b), p).unwrap_err().to_string();
        assert!(e.contains("Fortran"), "{e}");
        let e = parse_npy(Arc::new(npy_bytes(">f4", &[1], &[0; 4])), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("big-endian"), "{e}");
    }
}
