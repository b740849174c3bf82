//! Decoding PostgreSQL's `pgoutput` logical replication messages
//! (protocol version 1) into typed changes.
//!
//! This module owns the wire format only: it turns the bytes of one
//! message into a [`Message`], with column values still as PostgreSQL's
//! text output. Mapping relations to Weir tables and text to Arrow is the
//! source's job. Malformed input is an error naming what was expected,
//! never a panic.

/// One column value of a replicated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change; the row's old value
    /// stands.
    Unchanged,
    /// PostgreSQL's text output of the value.
    Text(String),
    /// The binary send format (only with the `binary` option).
    Binary(Vec<u8>),
}

/// A column of a relation, as the upstream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (the key an update or delete names).
    pub key: bool,
}

/// A relation (table) description, sent before the first change to it in
/// a session and again whenever it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the old row's key columns (`K`) or whole row (`O`, with
    /// REPLICA IDENTITY FULL), when the upstream sends it.
    Update {
        relation: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, type, logical decoding messages: nothing to apply.
    Other(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError(format!(
                "{what} runs past the end at byte {}",
                self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.bytes[self.at..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(DecodeError(format!("{what} is not terminated")));
        };
        let s = String::from_utf8(rest[..nul].to_vec())
            .map_err(|_| DecodeError(format!("{what} is not UTF-8")))?;
        self.at += nul + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.i16("column count")?;
        if n < 0 {
            return Err(DecodeError(format!("negative column count {n}")));
        }
        // Error texts are built only on error: this runs per value.
        let what = |i: i16| format!("column {i}");
        (0..n)
            .map(|i| {
                let at = |e: DecodeError| DecodeError(format!("{}: {}", what(i), e.0));
                let kind = self.u8("kind").map_err(at)?;
                match kind {
                    b'n' => Ok(Value::Null),
                    b'u' => Ok(Value::Unchanged),
                    kind @ (b't' | b'b') => {
                        let len = self.i32("length").map_err(at)?;
                        let len = usize::try_from(len)
                            .map_err(|_| DecodeError(format!("{} has length {len}", what(i))))?;
                        let bytes = self.take(len, "value").map_err(at)?;
                        if kind == b't' {
                            std::str::from_utf8(bytes)
                                .map(|s| Value::Text(s.to_owned()))
                                .map_err(|_| DecodeError(format!("{} is not UTF-8 text", what(i))))
                        } else {
                            Ok(Value::Binary(bytes.to_vec()))
                        }
                    }
                    other => Err(DecodeError(format!("{} has kind {:?}", what(i), other as char))),
                }
            })
            .collect()
    }
}

/// Decode one pgoutput message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8("message type")?;
    let message = match tag {
        b'B' => {
            let final_lsn = r.u64("final LSN")?;
            let _commit_time = r.u64("commit time")?;
            let xid = r.u32("xid")?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8("flags")?;
            let commit_lsn = r.u64("commit LSN")?;
            let end_lsn = r.u64("end LSN")?;
            let _time = r.u64("commit time")?;
            Message::Commit { commit_lsn, end_lsn }
        }
        b'R' => {
            let oid = r.u32("relation oid")?;
            let namespace = r.string("namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.i16("column count")?;
            let columns = (0..n.max(0))
                .map(|_| {
                    let flags = r.u8("column flags")?;
                    Ok(Column {
                        name: r.string("column name")?,
                        type_oid: r.u32("column type")?,
                        type_modifier: r.i32("type modifier")?,
                        key: flags & 1 == 1,
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32("relation oid")?;
            match r.u8("new tuple marker")? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                other => return Err(DecodeError(format!("insert without N (got {:?})", other as char))),
            }
        }
        b'U' => {
            let relation = r.u32("relation oid")?;
            let (old, marker) = match r.u8("tuple marker")? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    (Some(old), r.u8("new tuple marker")?)
                }
                m => (None, m),
            };
            if marker != b'N' {
                return Err(DecodeError(format!(
                    "update without new tuple (got {:?})",
                    marker as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("relation oid")?;
            match r.u8("old tuple marker")? {
                b'K' | b'O' => Message::Delete {
                    relation,
                    old: r.tuple()?,
                },
                other => {
                    return Err(DecodeError(format!(
                        "delete without K or O (got {:?})",
                        other as char
                    )));
                }
            }
        }
        b'T' => {
            let n = r.i32("relation count")?;
            let _options = r.u8("truncate options")?;
            let relations = (0..n.max(0))
                .map(|_| r.u32("relation oid"))
                .collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Value]) {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Value::Null => out.push(b'n'),
                Value::Unchanged => out.push(b'u'),
                Value::Text(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Value::Binary(b) => {
                    out.push(b'b');
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    #[test]
    fn relation_and_changes() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16385u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "orders");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        cstr(&mut m, "id");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        cstr(&mut m, "note");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&m).unwrap() else {
            panic!("relation")
        };
        assert_eq!(
            (rel.oid, rel.name.as_str(), rel.columns.len()),
            (16385, "orders", 2)
        );
        assert!(rel.columns[0].key && !rel.columns[1].key);

        let row = vec![Value::Text("7".into()), Value::Text("héllo\tworld".into())];
        let mut m = vec![b'I'];
        m.extend_from_slice(&16385u32.to_be_bytes());
        m.push(b'N');
        tuple(&mut m, &row);
        assert_eq!(
            decode(&m).unwrap(),
            Message::Insert {
                relation: 16385,
                new: row.clone()
            }
        );

        let key = vec![Value::Text("7".into()), Value::Null];
        let new = vec![Value::Text("8".into()), Value::Unchanged];
        let mut m = vec![b'U'];
        m.extend_from_slice(&16385u32.to_be_bytes());
        m.push(b'K');
        tuple(&mut m, &key);
        m.push(b'N');
        tuple(&mut m, &new);
        assert_eq!(
            decode(&m).unwrap(),
            Message::Update {
                relation: 16385,
                old: Some(key.clone()),
                new
            }
        );

        let mut m = vec![b'T'];
        m.extend_from_slice(&2i32.to_be_bytes());
        m.push(0);
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            decode(&m).unwrap(),
            Message::Truncate {
                relations: vec![1, 2]
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut m = vec![b'I'];
        m.extend_from_slice(&1u32.to_be_bytes());
        m.push(b'N');
        tuple(&mut m, &[Value::Text("abcdef".into())]);
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[b'D', 0, 0, 0, 1, b'X']).is_err());
    }
}
