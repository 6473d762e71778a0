//! A restricted pickle reader for PyTorch checkpoints: it rebuilds dictionaries, lists,
//! tuples, strings, numbers, storages and tensors, and nothing else.
//!
//! A pickle is a small program; Python's unpickler imports and calls whatever it names. This
//! one interprets the program itself and knows a fixed list of names (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`, the `torch.*Storage`
//! types): any other name is refused with an error that says what the pickle asked for.
//! Nothing from a checkpoint is ever executed.

use std::collections::HashMap;

use candle_core::DType;

/// A storage's element type, from its `torch.*Storage` class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    /// `torch.FloatStorage`.
    F32,
    /// `torch.HalfStorage`.
    F16,
    /// `torch.BFloat16Storage`.
    BF16,
    /// `torch.DoubleStorage`.
    F64,
    /// `torch.LongStorage`.
    I64,
    /// `torch.IntStorage`.
    I32,
    /// `torch.ShortStorage`.
    I16,
    /// `torch.CharStorage` (signed bytes).
    I8,
    /// `torch.ByteStorage`.
    U8,
    /// `torch.BoolStorage`.
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// The name shown to users (safetensors' spelling).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F64 => "F64",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
        }
    }

    /// The candle dtype the raw bytes are read as, if candle has one.
    pub fn candle_dtype(self) -> Option<DType> {
        Some(match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::I64 => DType::I64,
            Self::U8 | Self::Bool => DType::U8,
            Self::I32 => DType::I32,
            Self::I16 => DType::I16,
            Self::I8 => return None,
        })
    }
}

/// A storage a tensor points into: the archive entry `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// The storage's key (its file name under `data/`).
    pub key: String,
    /// The element type.
    pub dtype: StorageType,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage holding the data.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The tensor's strides, in elements.
    pub stride: Vec<usize>,
}

/// The names a checkpoint pickle may use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageType),
}

/// A value rebuilt from the pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer (beyond 64 bits is refused).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list (or set).
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A storage (from a persistent id).
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
    /// One of the allowed callables, before it is called.
    #[doc(hidden)]
    Callable(GlobalHandle),
}

/// An allowed callable, opaque outside this module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalHandle(Global);

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Callable(_) => "callable",
        }
    }

    /// Number of values inside (itself included): the cost of cloning it.
    fn weight(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::weight).sum::<usize>(),
            Value::Dict(v) => {
                1 + v
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<usize>()
            }
            Value::Str(s) => 1 + s.len() / 64,
            Value::Bytes(b) => 1 + b.len() / 64,
            _ => 1,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    fn as_usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

/// How deep containers (lists, tuples, dicts) may nest in a checkpoint pickle. A state dict
/// nests a few levels; the bound keeps every walk over the rebuilt value (and dropping it)
/// from overflowing the stack.
pub const MAX_NESTING: usize = 128;

/// One entry of the stack: a MARK, or a value and how deep its containers nest (1 for a
/// value that holds no other).
#[derive(Debug)]
enum Slot {
    Mark,
    Value(Value, usize),
}

/// Interprets `bytes` as a checkpoint pickle and returns the value it builds. Errors are
/// plain messages; the caller adds the file name.
pub fn unpickle(bytes: &[u8]) -> Result<Value, String> {
    unpickle_at(bytes, 0).map(|(value, _)| value)
}

/// Interprets the pickle starting at `start` of `bytes` (several pickles may follow each
/// other, as in the legacy `torch.save` format); returns its value and where it ended.
pub fn unpickle_at(bytes: &[u8], start: usize) -> Result<(Value, usize), String> {
    let mut unpickler = Unpickler {
        bytes,
        pos: start.min(bytes.len()),
        stack: Vec::new(),
        memo: HashMap::new(),
        clone_budget: 16 * bytes.len() + (1 << 16),
    };
    let value = unpickler.run()?;
    Ok((value, unpickler.pos))
}

struct Unpickler<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    /// Memoized values, with their nesting depth.
    memo: HashMap<u32, (Value, usize)>,
    /// How many values BINGET, PUT and DUP may still copy (a bound against pickles built to exhaust memory).
    clone_budget: usize,
}

impl Unpickler<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends early (needs {n} more bytes at offset {})",
                    self.pos
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn len_u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a text line")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, len: usize) -> Result<Value, String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map(Value::Str)
            .map_err(|_| "a pickled string is not valid UTF-8".to_string())
    }

    /// Pushes a value that holds no other.
    fn push(&mut self, value: Value) {
        self.stack.push(Slot::Value(value, 1));
    }

    /// Pushes a value whose containers nest `depth` deep, refusing more than [`MAX_NESTING`].
    fn push_nested(&mut self, value: Value, depth: usize) -> Result<(), String> {
        check_depth(depth)?;
        self.stack.push(Slot::Value(value, depth));
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.pop_nested().map(|(value, _)| value)
    }

    /// Pops a value and its nesting depth.
    fn pop_nested(&mut self) -> Result<(Value, usize), String> {
        match self.stack.pop() {
            Some(Slot::Value(v, depth)) => Ok((v, depth)),
            Some(Slot::Mark) => Err("a MARK where a value was expected".into()),
            None => Err("the pickle pops an empty stack".into()),
        }
    }

    /// The top value, for adding to it `items` nested `depth` deep (its depth grows to fit).
    fn top_for(&mut self, depth: usize) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Slot::Value(v, own)) => {
                if depth > 0 {
                    check_depth(depth + 1)?;
                    *own = (*own).max(depth + 1);
                }
                Ok(v)
            }
            _ => Err("no value on the stack".into()),
        }
    }

    /// Pops everything down to the last MARK (removed too), with the deepest nesting among
    /// the values (0 when there are none).
    fn pop_mark(&mut self) -> Result<(Vec<Value>, usize), String> {
        let mark = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or("the pickle has no MARK where one is needed")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        let mut deepest = 0;
        let values = items
            .into_iter()
            .map(|s| match s {
                Slot::Value(v, depth) => {
                    deepest = deepest.max(depth);
                    v
                }
                Slot::Mark => unreachable!("marks end at the last one"),
            })
            .collect();
        Ok((values, deepest))
    }

    /// Takes the cost of copying `value` from the clone budget.
    fn charge(&mut self, value: &Value) -> Result<(), String> {
        let weight = value.weight();
        if weight > self.clone_budget {
            return Err("the pickle copies more data than a checkpoint can hold".into());
        }
        self.clone_budget -= weight;
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let (value, depth) = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("the pickle reads memo slot {key}, which was never written"))?;
        let (value, depth) = (value.clone(), *depth);
        self.charge(&value)?;
        self.push_nested(value, depth)
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let (value, depth) = match self.stack.last() {
            Some(Slot::Value(v, depth)) => (v.clone(), *depth),
            _ => return Err("the pickle memoizes a MARK or an empty stack".into()),
        };
        self.charge(&value)?;
        self.memo.insert(key, (value, depth));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameter,
            ("torch", class) => match StorageType::from_class(class) {
                Some(t) => Global::Storage(t),
                None => return Err(refusal(module, name)),
            },
            _ => return Err(refusal(module, name)),
        };
        self.push(Value::Callable(GlobalHandle(global)));
        Ok(())
    }

    fn reduce(&mut self) -> Result<(), String> {
        let (args, depth) = self.pop_nested()?;
        let callable = self.pop()?;
        let Value::Callable(GlobalHandle(global)) = callable else {
            return Err(format!(
                "the pickle calls a {}, not an allowed function",
                callable.kind()
            ));
        };
        let Value::Tuple(args) = args else {
            return Err("the pickle calls a function without an argument tuple".into());
        };
        let value = match global {
            Global::OrderedDict => match args.as_slice() {
                [] => Value::Dict(Vec::new()),
                [Value::List(pairs)] | [Value::Tuple(pairs)] => {
                    let mut dict = Vec::new();
                    for pair in pairs {
                        match pair {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                dict.push((kv[0].clone(), kv[1].clone()))
                            }
                            _ => return Err("OrderedDict built from something not pairs".into()),
                        }
                    }
                    Value::Dict(dict)
                }
                _ => return Err("OrderedDict called with unexpected arguments".into()),
            },
            Global::RebuildTensor => rebuild_tensor(&args)?,
            Global::RebuildParameter => match args.into_iter().next() {
                Some(tensor @ Value::Tensor(_)) => tensor,
                _ => return Err("_rebuild_parameter called without a tensor".into()),
            },
            Global::Storage(_) => {
                return Err("the pickle constructs a storage directly (not supported)".into())
            }
        };
        // The result nests no deeper than its arguments.
        self.push_nested(value, depth)
    }

    fn persistent_load(&mut self) -> Result<(), String> {
        let pid = self.pop()?;
        let Value::Tuple(parts) = &pid else {
            return Err(format!(
                "persistent id is a {}, expected a tuple",
                pid.kind()
            ));
        };
        match parts.as_slice() {
            // The legacy format adds view metadata, which must be None (no storage views).
            [Value::Str(tag), Value::Callable(GlobalHandle(Global::Storage(dtype))), Value::Str(key), _location, numel, rest @ ..]
                if tag == "storage" && rest.iter().all(|v| *v == Value::None) =>
            {
                let numel = numel
                    .as_usize()
                    .ok_or("storage size is not a non-negative integer")?;
                self.push(Value::Storage(StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel,
                }));
                Ok(())
            }
            _ => Err("persistent id is not a ('storage', type, key, location, size) tuple".into()),
        }
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unknown pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                0x8f => self.push(Value::List(Vec::new())),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.len_u32()?
                    };
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes is too large"));
                    }
                    let bytes = self.take(n)?;
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v))
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let text = line.trim_end_matches('L');
                    let value = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            text.parse()
                                .map_err(|_| format!("bad integer `{line}` in the pickle"))?,
                        ),
                    };
                    self.push(value)
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .parse()
                        .map_err(|_| format!("bad float `{line}` in the pickle"))?;
                    self.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.string(n)?;
                    self.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)
                }
                0x8d => {
                    let n = usize::try_from(u64::from_le_bytes(self.le()?))
                        .map_err(|_| "string length too large")?;
                    let v = self.string(n)?;
                    self.push(v)
                }
                b'T' | b'U' => {
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.len_u32()?
                    };
                    let bytes = self.take(n)?;
                    let text = bytes.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(text))
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.len_u32()?,
                        _ => usize::try_from(u64::from_le_bytes(self.le()?))
                            .map_err(|_| "bytes length too large")?,
                    };
                    let bytes = self.take(n)?.to_vec();
                    self.push(Value::Bytes(bytes))
                }
                b't' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::Tuple(items), depth + 1)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    let mut deepest = 0;
                    for _ in 0..n {
                        let (item, depth) = self.pop_nested()?;
                        deepest = deepest.max(depth);
                        items.push(item);
                    }
                    items.reverse();
                    self.push_nested(Value::Tuple(items), deepest + 1)?
                }
                b'l' | 0x91 => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::List(items), depth + 1)?
                }
                b'a' => {
                    let (item, depth) = self.pop_nested()?;
                    match self.top_for(depth)? {
                        Value::List(list) => list.push(item),
                        other => return Err(format!("APPEND to a {}", other.kind())),
                    }
                }
                b'e' | 0x90 => {
                    let (items, depth) = self.pop_mark()?;
                    match self.top_for(depth)? {
                        Value::List(list) => list.extend(items),
                        other => return Err(format!("APPENDS to a {}", other.kind())),
                    }
                }
                b'd' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::Dict(pairs(items)?), depth + 1)?
                }
                b's' => {
                    let (value, value_depth) = self.pop_nested()?;
                    let (key, key_depth) = self.pop_nested()?;
                    match self.top_for(value_depth.max(key_depth))? {
                        Value::Dict(dict) => dict.push((key, value)),
                        other => return Err(format!("SETITEM on a {}", other.kind())),
                    }
                }
                b'u' => {
                    let (items, depth) = self.pop_mark()?;
                    let items = pairs(items)?;
                    match self.top_for(depth)? {
                        Value::Dict(dict) => dict.extend(items),
                        other => return Err(format!("SETITEMS on a {}", other.kind())),
                    }
                }
                b'q' => {
                    let key = self.u8()?;
                    self.memo_put(key.into())?
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_put(key)?
                }
                0x94 => {
                    let key = self.memo.len() as u32;
                    self.memo_put(key)?
                }
                b'p' => {
                    let line = self.line()?;
                    let key = line.parse().map_err(|_| format!("bad memo key `{line}`"))?;
                    self.memo_put(key)?
                }
                b'h' => {
                    let key = self.u8()?;
                    self.memo_get(key.into())?
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_get(key)?
                }
                b'g' => {
                    let line = self.line()?;
                    let key = line.parse().map_err(|_| format!("bad memo key `{line}`"))?;
                    self.memo_get(key)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.global(&module, &name)?,
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'R' => self.reduce()?,
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); only OrderedDict is allowed.
                    let _args = self.pop()?;
                    match self.pop()? {
                        Value::Callable(GlobalHandle(Global::OrderedDict)) => {
                            self.push(Value::Dict(Vec::new()))
                        }
                        other => {
                            return Err(format!(
                                "the pickle instantiates a {} (not allowed)",
                                other.kind()
                            ))
                        }
                    }
                }
                b'b' => {
                    // BUILD sets an object's state; dicts and tensors have none to set, and
                    // the state is data only, so it is dropped.
                    let _state = self.pop()?;
                    match self.top_for(0)? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(format!("BUILD on a {}", other.kind())),
                    }
                }
                b'Q' => self.persistent_load()?,
                b'P' => return Err("text persistent ids are not supported".into()),
                b'0' => {
                    self.stack.pop().ok_or("the pickle pops an empty stack")?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let (top, depth) = match self.stack.last() {
                        Some(Slot::Value(v, depth)) => (v.clone(), *depth),
                        _ => return Err("DUP of a MARK or an empty stack".into()),
                    };
                    self.charge(&top)?;
                    self.push_nested(top, depth)?
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at offset {at}"
                    ))
                }
            }
        }
    }
}

fn check_depth(depth: usize) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "the pickle nests lists, tuples or dicts more than {MAX_NESTING} levels deep"
        ));
    }
    Ok(())
}

fn refusal(module: &str, name: &str) -> String {
    format!(
        "the pickle asks for {module}.{name}, which could run code; only tensors, storages, \
         dicts, lists, strings and numbers are loaded (convert the file to .safetensors to be sure)"
    )
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict with an odd number of keys and values".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [Value::Storage(storage), offset, size, stride, ..] = args else {
        return Err("_rebuild_tensor_v2 called without (storage, offset, size, stride)".into());
    };
    let offset = offset.as_usize().ok_or("tensor offset is not an integer")?;
    let shape = size
        .as_usizes()
        .ok_or("tensor size is not a tuple of integers")?;
    let stride = stride
        .as_usizes()
        .ok_or("tensor stride is not a tuple of non-negative integers")?;
    if shape.len() != stride.len() {
        return Err("tensor size and stride have different lengths".into());
    }
    Ok(Value::Tensor(TensorRef {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_globals_outside_the_allowed_list() {
        // GLOBAL os.system, a string, TUPLE1, REDUCE, STOP.
        let pickle = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.";
        let err = unpickle(pickle).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
    }

    #[test]
    fn reads_containers_and_numbers() {
        // {'a': [1, 2.5, 'x'], 'b': (True, None)}
        let pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xeX\x01\x00\x00\x00b\x88N\x86u.";
        let value = unpickle(pickle).unwrap();
        assert_eq!(
            value,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![
                        Value::Int(1),
                        Value::Float(2.5),
                        Value::Str("x".into())
                    ])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Bool(true), Value::None])
                ),
            ])
        );
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        assert!(unpickle(b"\x80\x02}q\x00(X\x09\x00\x00").is_err());
        assert!(unpickle(b"").is_err());
    }
}
