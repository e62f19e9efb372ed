//! A restricted reader for PyTorch `.pt` files (`torch.save`, zip format).
//!
//! The pickle inside is *interpreted*, never executed: only the opcodes that
//! `torch.save` emits for tensors and plain containers are understood, and a
//! `GLOBAL` may name only the allow-list in [`allowed_global`] (tensor
//! rebuild functions, storage types, `collections.OrderedDict`). Any other
//! global (`os.system`, `builtins.eval`, ...) is refused with an error naming
//! the file and the global, before anything would be called. Storages come
//! from the archive's `data/<key>` entries.
//!
//! Objects are values, not shared references: a memoised list that is
//! appended to after `BINPUT` is seen as it was when memoised. `torch.save`
//! output never depends on that.

use super::tensor::{DType, Tensor};
use super::CaptureError;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed global, not yet called.
    Global(Global),
    /// A storage named by a persistent id, its bytes loaded.
    Storage(DType, Arc<Vec<u8>>),
    Tensor(Tensor),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    OrderedDict,
    StorageType(DType),
}

/// The allow-list. Everything else is refused.
pub fn allowed_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch", s) => Global::StorageType(match s {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        }),
        _ => return None,
    })
}

impl Value {
    /// Look up a string key of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            Value::Tensor(t) => t.scalar_i64(),
            _ => None,
        }
    }
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(..) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
    /// Keys of a dict, for error messages.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Value::Dict(items) => items
                .iter()
                .map(|(k, _)| match k {
                    Value::Str(s) => s.clone(),
                    other => format!("<{}>", other.kind()),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Read a `torch.save` zip file into a value.
pub fn read_pt(path: &Path) -> Result<Value, CaptureError> {
    let bytes =
        std::fs::read(path).map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))?;
    parse_pt(&bytes, path)
}

pub fn parse_pt(bytes: &[u8], path: &Path) -> Result<Value, CaptureError> {
    let err = |m: String| CaptureError::input(path, m);
    if bytes.len() >= 2 && bytes[0] == 0x80 {
        return Err(err(
            "legacy (pre-1.6, non-zip) torch.save format is not supported: re-save with torch.save(obj, f) from torch >= 1.6".into(),
        ));
    }
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| err(format!("not a torch.save zip file: {e}")))?;
    let pkl_name = z
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| err("no data.pkl in the archive: not a torch.save file".into()))?;
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap().to_string();
    if let Ok(mut bo) = z.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = bo.read_to_string(&mut s);
        if s.trim() == "big" {
            return Err(err("big-endian torch.save files are not supported".into()));
        }
    }
    let pkl = read_entry(&mut z, &pkl_name, path)?;
    let mut storages: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut load = |key: &str| -> Result<Arc<Vec<u8>>, CaptureError> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let b = Arc::new(read_entry(&mut z, &format!("{prefix}data/{key}"), path)?);
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    Unpickler::new(&pkl, path).run(&mut load)
}

fn read_entry<R: std::io::Read + std::io::Seek>(
    z: &mut zip::ZipArchive<R>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>, CaptureError> {
    let mut e = z
        .by_name(name)
        .map_err(|e| CaptureError::input(path, format!("archive entry '{name}': {e}")))?;
    let mut v = Vec::with_capacity((e.size() as usize).min(1 << 26));
    e.read_to_end(&mut v)
        .map_err(|e| CaptureError::input(path, format!("archive entry '{name}': {e}")))?;
    Ok(v)
}

/// Loads a storage's bytes by key from the archive.
type StorageLoader<'l> = dyn FnMut(&str) -> Result<Arc<Vec<u8>>, CaptureError> + 'l;

struct Unpickler<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(b: &'a [u8], path: &'a Path) -> Self {
        Self {
            b,
            pos: 0,
            path,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, m: impl Into<String>) -> CaptureError {
        CaptureError::input(self.path, format!("pickle: {}", m.into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CaptureError> {
        if self.b.len() - self.pos < n {
            return Err(self.err(format!("truncated at byte {}", self.pos)));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CaptureError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CaptureError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, CaptureError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes(s.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, CaptureError> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap()))
    }
    fn pop(&mut self) -> Result<Value, CaptureError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.pop().unwrap())
    }
    fn top(&mut self) -> Result<&mut Value, CaptureError> {
        let path = self.path;
        self.stack
            .last_mut()
            .ok_or_else(|| CaptureError::input(path, "pickle: stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, CaptureError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.err("corrupt MARK"));
        }
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize) -> Result<Value, CaptureError> {
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(|s| Value::Str(s.to_string()))
            .map_err(|_| self.err("string is not UTF-8"))
    }
    fn global(&mut self, module: &str, name: &str) -> Result<Value, CaptureError> {
        allowed_global(module, name).map(Value::Global).ok_or_else(|| {
            self.err(format!(
                "refusing global '{module}.{name}': only tensor rebuilds, storages and plain containers are allowed (nothing in the file is executed)"
            ))
        })
    }

    fn run(mut self, load: &mut StorageLoader) -> Result<Value, CaptureError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.u64()?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = usize::try_from(n).map_err(|_| self.err("string too long"))?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.err(format!("integer of {n} bytes is too large")));
                    }
                    let s = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &byte) in s.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let s = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(s.try_into().unwrap())));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = pairs(items).ok_or_else(|| self.err("odd number of dict items"))?;
                    self.stack.push(Value::Dict(v));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        other => {
                            let kind = other.kind();
                            return Err(self.err(format!("SETITEM on a {kind}")));
                        }
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let kv = pairs(items).ok_or_else(|| self.err("odd number of dict items"))?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(kv),
                        other => {
                            let kind = other.kind();
                            return Err(self.err(format!("SETITEMS on a {kind}")));
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        other => {
                            let kind = other.kind();
                            return Err(self.err(format!("APPEND on a {kind}")));
                        }
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => {
                            let kind = other.kind();
                            return Err(self.err(format!("APPENDS on a {kind}")));
                        }
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| self.err(format!("memo key {i} not found")))?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(&m, &n)?;
                            self.stack.push(g);
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    match (obj, state) {
                        (_, Value::None) => {}
                        (Value::Dict(d), Value::Dict(s)) => d.extend(s),
                        (Value::Tensor(_), Value::Dict(s)) if s.is_empty() => {}
                        (Value::Tensor(_), Value::Tuple(_)) => {}
                        (o, s) => {
                            let (ok, sk) = (o.kind(), s.kind());
                            return Err(self.err(format!("BUILD of a {ok} with a {sk} state")));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid, load)?;
                    self.stack.push(v);
                }
                b'.' => {
                    return self.pop();
                }
                other => {
                    return Err(self.err(format!(
                        "unsupported opcode 0x{other:02x} at byte {at} (only the opcodes torch.save emits for tensors and containers are read)"
                    )))
                }
            }
        }
    }

    fn line(&mut self) -> Result<String, CaptureError> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated GLOBAL"))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("GLOBAL name is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn persistent(&mut self, pid: Value, load: &mut StorageLoader) -> Result<Value, CaptureError> {
        let Value::Tuple(items) = pid else {
            return Err(self.err("persistent id is not a tuple"));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::StorageType(dt)), Value::Str(key), _loc, Value::Int(numel)]
                if tag == "storage" =>
            {
                let bytes = load(key)?;
                let need = (*numel as u128) * dt.size() as u128;
                if (bytes.len() as u128) < need {
                    return Err(self.err(format!(
                        "storage '{key}' holds {} bytes, {need} expected",
                        bytes.len()
                    )));
                }
                Ok(Value::Storage(*dt, bytes))
            }
            _ => Err(self.err("unsupported persistent id (expected a torch storage)")),
        }
    }

    fn call(&mut self, f: Value, args: Value) -> Result<Value, CaptureError> {
        let Value::Global(g) = f else {
            return Err(self.err(format!("REDUCE on a {}, not a global", f.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        match g {
            Global::OrderedDict => Ok(Value::Dict(Vec::new())),
            Global::RebuildParameter => args
                .into_iter()
                .next()
                .ok_or_else(|| self.err("_rebuild_parameter without arguments")),
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let mut it = args.into_iter();
                let (storage, offset, size, stride) = (it.next(), it.next(), it.next(), it.next());
                let (
                    Some(Value::Storage(dt, bytes)),
                    Some(Value::Int(offset)),
                    Some(size),
                    Some(stride),
                ) = (storage, offset, size, stride)
                else {
                    return Err(self.err("tensor rebuild with unexpected arguments"));
                };
                let dims = |v: Value| -> Option<Vec<i64>> {
                    match v {
                        Value::Tuple(x) | Value::List(x) => x.iter().map(Value::as_int).collect(),
                        _ => None,
                    }
                };
                let size =
                    dims(size).ok_or_else(|| self.err("tensor size is not a tuple of ints"))?;
                let stride =
                    dims(stride).ok_or_else(|| self.err("tensor stride is not a tuple of ints"))?;
                self.rebuild(dt, bytes, offset, &size, &stride)
            }
            Global::StorageType(_) => Err(self.err("a storage type cannot be called")),
        }
    }

    fn rebuild(
        &self,
        dt: DType,
        bytes: Arc<Vec<u8>>,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Value, CaptureError> {
        if size.len() != stride.len() || size.iter().chain(stride).any(|&x| x < 0) || offset < 0 {
            return Err(self.err(format!(
                "bad tensor geometry size {size:?} stride {stride:?}"
            )));
        }
        let shape: Vec<usize> = size.iter().map(|&x| x as usize).collect();
        let esz = dt.size();
        let avail = bytes.len() / esz;
        // largest element index touched
        let mut last: u128 = offset as u128;
        for (&s, &st) in size.iter().zip(stride) {
            if s == 0 {
                last = 0;
                break;
            }
            last += (s as u128 - 1) * st as u128;
        }
        let numel: u128 = shape.iter().map(|&x| x as u128).product();
        if numel > 0 && last >= avail as u128 {
            return Err(self.err(format!(
                "tensor of size {size:?} stride {stride:?} offset {offset} reads past its storage ({avail} elements)"
            )));
        }
        let mut contiguous = true;
        let mut expect = 1i64;
        for (&s, &st) in size.iter().zip(stride).rev() {
            if s != 1 && st != expect {
                contiguous = false;
            }
            expect *= s;
        }
        if contiguous {
            return Tensor::new(dt, shape, bytes, offset as usize * esz, self.path)
                .map(Value::Tensor);
        }
        // gather a strided view into a fresh buffer
        let n = numel as usize;
        let mut out = Vec::with_capacity(n * esz);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let e: usize = offset as usize
                + idx
                    .iter()
                    .zip(stride)
                    .map(|(&i, &st)| i * st as usize)
                    .sum::<usize>();
            out.extend_from_slice(&bytes[e * esz..(e + 1) * esz]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Tensor::new(dt, shape, Arc::new(out), 0, self.path).map(Value::Tensor)
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if items.len() % 2 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_global_is_refused_before_anything_runs() {
        // pickle of os.system('echo pwned'), protocol 2
        let pkl = b"\x80\x02cos\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let e = Unpickler::new(pkl, Path::new("evil.pt"))
            .run(&mut |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(e.contains("evil.pt") && e.contains("os.system"), "{e}");
    }

    #[test]
    fn containers_and_ints() {
        // {'a': [1, -2, 300], 'b': (True, None)} protocol 2
        let pkl = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01eX\x01\x00\x00\x00bq\x03\x88N\x86q\x04u.";
        let v = Unpickler::new(pkl, Path::new("x.pt"))
            .run(&mut |_| unreachable!())
            .unwrap();
        match v.get("a") {
            Some(Value::List(l)) => {
                let ints: Vec<i64> = l.iter().filter_map(Value::as_int).collect();
                assert_eq!(ints, vec![1, -2, 300]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(v.get("b"), Some(Value::Tuple(t)) if t.len() == 2));
    }
}
