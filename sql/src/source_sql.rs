//! Weir's own DDL for external systems: secrets, connections and sources.
//!
//! ```sql
//! CREATE SECRET [IF NOT EXISTS] name AS 'value'
//! CREATE CONNECTION [IF NOT EXISTS] name TO POSTGRES (HOST '...', PORT 5432,
//!     USER '...', PASSWORD SECRET s, DATABASE '...', SSL MODE 'disable',
//!     [SSL CERTIFICATE AUTHORITY 'pem' | SECRET s])
//! CREATE SOURCE [IF NOT EXISTS] name FROM POSTGRES CONNECTION c
//!     (PUBLICATION 'p') FOR ALL TABLES | FOR TABLES (schema.a, b AS c)
//! CREATE SOURCE [IF NOT EXISTS] name FROM LOAD GENERATOR COUNTER | NEXMARK
//!     [(EVENTS PER SECOND n, MAX EVENTS n, SEED n, PREGENERATE)]
//!     [FOR ALL TABLES | FOR TABLES (bid, auction AS a)]
//! CREATE SOURCE [IF NOT EXISTS] name [(column type [NOT NULL], ...)]
//!     FROM FILES 'file:///dir/*.csv' | 's3://bucket/prefix/*.parquet'
//!     [(FORMAT PARQUET | CSV | JSON, HEADER, DELIMITER ',', WATCH)] [WATCH]
//! DROP SOURCE | CONNECTION | SECRET [IF EXISTS] name [, ...] [CASCADE]
//! ```
//!
//! This module only parses (with sqlparser's tokenizer and parser helpers,
//! so errors carry positions); what the statements do is the
//! coordinator's business.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::SqlError;
use crate::statement::parser_error;

/// A statement about secrets, connections or sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatement {
    CreateSecret {
        name: String,
        value: String,
        if_not_exists: bool,
    },
    CreateConnection {
        name: String,
        options: Vec<(String, OptionValue)>,
        if_not_exists: bool,
    },
    CreateSource {
        name: String,
        connection: String,
        publication: String,
        /// `None` for `FOR ALL TABLES`.
        tables: Option<Vec<TableRef>>,
        if_not_exists: bool,
    },
    /// `FROM LOAD GENERATOR`: the generator's name as written (upper
    /// case), its options (keys upper case; `None` for a bare flag) and
    /// the tables chosen (`None`: all of them).
    CreateGeneratorSource {
        name: String,
        generator: String,
        options: Vec<(String, Option<String>)>,
        tables: Option<Vec<TableRef>>,
        if_not_exists: bool,
    },
    /// `FROM FILES`: the URL pattern, the declared columns (`None`:
    /// taken from the files) as the text of a column list, and the
    /// options (keys upper case; `FORMAT CSV` is the key `FORMAT` with the
    /// value `CSV`; `None` for a bare flag). A trailing `WATCH` is the
    /// option `WATCH`.
    CreateFileSource {
        name: String,
        url: String,
        columns: Option<String>,
        options: Vec<(String, Option<String>)>,
        if_not_exists: bool,
    },
    Drop {
        kind: ObjectKind,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Secret,
    Connection,
    Source,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Connection => "connection",
            ObjectKind::Source => "source",
        }
    }
}

/// An option value: `'text'`, a number, or `SECRET name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    Text(String),
    Number(String),
    Secret(String),
}

/// An upstream table named in `FOR TABLES (...)`, and the name it gets in
/// Weir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
    pub alias: Option<String>,
}

/// Whether `sql` is one of this module's statements (by its first words).
pub fn recognizes(first: &str, second: &str) -> bool {
    matches!(
        (first, second),
        ("CREATE", "SECRET" | "CONNECTION" | "SOURCE") | ("DROP", "SECRET" | "CONNECTION" | "SOURCE")
    )
}

struct P<'a> {
    parser: Parser<'a>,
    sql: &'a str,
}

impl P<'_> {
    fn err(&self, e: datafusion::sql::sqlparser::parser::ParserError) -> SqlError {
        parser_error(e, self.sql)
    }

    /// After `FOR`: `ALL TABLES` (`None`) or `TABLES (a, schema.b AS c)`.
    fn tables(&mut self) -> Result<Option<Vec<TableRef>>, SqlError> {
        Ok(if self.word("ALL") {
            self.expect_word("TABLES")?;
            None
        } else {
            self.expect_word("TABLES")?;
            self.parser
                .expect_token(&Token::LParen)
                .map_err(|e| self.err(e))?;
            let mut tables = Vec::new();
            loop {
                let first = self.ident()?;
                let (schema, name) = if self.parser.consume_token(&Token::Period) {
                    (Some(first), self.ident()?)
                } else {
                    (None, first)
                };
                let alias = if self.word("AS") {
                    Some(self.ident()?)
                } else {
                    None
                };
                tables.push(TableRef { schema, name, alias });
                if !self.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            self.parser
                .expect_token(&Token::RParen)
                .map_err(|e| self.err(e))?;
            Some(tables)
        })
    }

    /// Consume the word `w` (any case) if it is next.
    fn word(&mut self, w: &str) -> bool {
        match self.parser.peek_token().token {
            Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w) => {
                self.parser.next_token();
                true
            }
            _ => false,
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<(), SqlError> {
        if self.word(w) {
            Ok(())
        } else {
            let found = self.parser.peek_token();
            self.parser
                .expected(w, found)
                .map_err(|e| parser_error(e, self.sql))
        }
    }

    fn ident(&mut self) -> Result<String, SqlError> {
        let i = self.parser.parse_identifier().map_err(|e| self.err(e))?;
        Ok(if i.quote_style.is_some() {
            i.value
        } else {
            i.value.to_ascii_lowercase()
        })
    }

    fn string(&mut self) -> Result<String, SqlError> {
        self.parser.parse_literal_string().map_err(|e| self.err(e))
    }

    fn if_not_exists(&mut self) -> Result<bool, SqlError> {
        if self.word("IF") {
            self.expect_word("NOT")?;
            self.expect_word("EXISTS")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn end(&mut self) -> Result<(), SqlError> {
        let _ = self.parser.consume_token(&Token::SemiColon);
        match self.parser.peek_token().token {
            Token::EOF => Ok(()),
            _ => {
                let found = self.parser.peek_token();
                self.parser
                    .expected("end of statement", found)
                    .map_err(|e| parser_error(e, self.sql))
            }
        }
    }

    /// `KEY WORDS value, FLAG, ...`: each key is one or more words, its
    /// value a number or a string, or nothing (a flag).
    fn generator_options(&mut self) -> Result<Vec<(String, Option<String>)>, SqlError> {
        let mut options = Vec::new();
        loop {
            let mut key = vec![self.ident()?.to_ascii_uppercase()];
            while let Token::Word(_) = self.parser.peek_token().token {
                key.push(self.ident()?.to_ascii_uppercase());
            }
            let _ = self.parser.consume_token(&Token::Eq);
            let value = match self.parser.peek_token().token {
                Token::Comma | Token::RParen => None,
                _ => {
                    let t = self.parser.next_token();
                    match t.token {
                        Token::SingleQuotedString(s) => Some(s),
                        Token::Number(n, _) => Some(n),
                        _ => {
                            return self
                                .parser
                                .expected("a number, a string, ',' or ')'", t)
                                .map_err(|e| parser_error(e, self.sql));
                        }
                    }
                }
            };
            options.push((key.join(" "), value));
            if !self.parser.consume_token(&Token::Comma) {
                return Ok(options);
            }
        }
    }

    fn option_value(&mut self) -> Result<OptionValue, SqlError> {
        if self.word("SECRET") {
            return Ok(OptionValue::Secret(self.ident()?));
        }
        let t = self.parser.next_token();
        match t.token {
            Token::SingleQuotedString(s) => Ok(OptionValue::Text(s)),
            Token::Number(n, _) => Ok(OptionValue::Number(n)),
            _ => self
                .parser
                .expected("a string, a number or SECRET name", t)
                .map_err(|e| parser_error(e, self.sql)),
        }
    }
}

/// Parse one statement this module [`recognizes`].
pub fn parse(sql: &str) -> Result<SourceStatement, SqlError> {
    let parser = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .map_err(|e| parser_error(e, sql))?;
    let mut p = P { parser, sql };
    let statement = if p.word("DROP") {
        let kind = if p.word("SECRET") {
            ObjectKind::Secret
        } else if p.word("CONNECTION") {
            ObjectKind::Connection
        } else {
            p.expect_word("SOURCE")?;
            ObjectKind::Source
        };
        let if_exists = if p.word("IF") {
            p.expect_word("EXISTS")?;
            true
        } else {
            false
        };
        let mut names = vec![p.ident()?];
        while p.parser.consume_token(&Token::Comma) {
            names.push(p.ident()?);
        }
        let cascade = p.word("CASCADE");
        if !cascade {
            p.word("RESTRICT");
        }
        SourceStatement::Drop {
            kind,
            names,
            if_exists,
            cascade,
        }
    } else {
        p.expect_word("CREATE")?;
        if p.word("SECRET") {
            let if_not_exists = p.if_not_exists()?;
            let name = p.ident()?;
            p.expect_word("AS")?;
            let value = p.string()?;
            SourceStatement::CreateSecret {
                name,
                value,
                if_not_exists,
            }
        } else if p.word("CONNECTION") {
            let if_not_exists = p.if_not_exists()?;
            let name = p.ident()?;
            p.expect_word("TO")?;
            p.expect_word("POSTGRES")?;
            p.parser
                .expect_token(&Token::LParen)
                .map_err(|e| parser_error(e, sql))?;
            let mut options = Vec::new();
            loop {
                let mut key = p.ident()?.to_ascii_uppercase();
                // `SSL MODE` and `SSL CERTIFICATE AUTHORITY` are several
                // words.
                if key == "SSL" {
                    if p.word("CERTIFICATE") {
                        p.expect_word("AUTHORITY")?;
                        key = "SSL CERTIFICATE AUTHORITY".into();
                    } else {
                        p.expect_word("MODE")?;
                        key = "SSL MODE".into();
                    }
                }
                let _ = p.parser.consume_token(&Token::Eq);
                options.push((key, p.option_value()?));
                if !p.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            p.parser
                .expect_token(&Token::RParen)
                .map_err(|e| parser_error(e, sql))?;
            SourceStatement::CreateConnection {
                name,
                options,
                if_not_exists,
            }
        } else {
            p.expect_word("SOURCE")?;
            let if_not_exists = p.if_not_exists()?;
            let name = p.ident()?;
            let columns = if p.parser.peek_token().token == Token::LParen {
                let (columns, constraints) = p.parser.parse_columns().map_err(|e| parser_error(e, sql))?;
                let mut parts: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
                parts.extend(constraints.iter().map(|c| c.to_string()));
                Some(parts.join(", "))
            } else {
                None
            };
            p.expect_word("FROM")?;
            if p.word("FILES") {
                let url = p.string()?;
                let mut options = if p.parser.consume_token(&Token::LParen) {
                    let options = p.generator_options()?;
                    p.parser
                        .expect_token(&Token::RParen)
                        .map_err(|e| parser_error(e, sql))?;
                    options
                        .into_iter()
                        .flat_map(|(key, value)| file_option(key, value))
                        .collect()
                } else {
                    Vec::new()
                };
                if p.word("WATCH") {
                    options.push(("WATCH".into(), None));
                }
                p.end()?;
                return Ok(SourceStatement::CreateFileSource {
                    name,
                    url,
                    columns,
                    options,
                    if_not_exists,
                });
            }
            if columns.is_some() {
                let found = p.parser.peek_token();
                return p
                    .parser
                    .expected("FILES (only a file source declares its columns)", found)
                    .map_err(|e| parser_error(e, sql));
            }
            if p.word("LOAD") {
                p.expect_word("GENERATOR")?;
                let generator = p.ident()?.to_ascii_uppercase();
                let options = if p.parser.consume_token(&Token::LParen) {
                    let options = p.generator_options()?;
                    p.parser
                        .expect_token(&Token::RParen)
                        .map_err(|e| parser_error(e, sql))?;
                    options
                } else {
                    Vec::new()
                };
                let tables = if p.word("FOR") { p.tables()? } else { None };
                p.end()?;
                return Ok(SourceStatement::CreateGeneratorSource {
                    name,
                    generator,
                    options,
                    tables,
                    if_not_exists,
                });
            }
            p.expect_word("POSTGRES")?;
            p.expect_word("CONNECTION")?;
            let connection = p.ident()?;
            p.parser
                .expect_token(&Token::LParen)
                .map_err(|e| parser_error(e, sql))?;
            p.expect_word("PUBLICATION")?;
            let _ = p.parser.consume_token(&Token::Eq);
            let publication = p.string()?;
            p.parser
                .expect_token(&Token::RParen)
                .map_err(|e| parser_error(e, sql))?;
            p.expect_word("FOR")?;
            let tables = p.tables()?;
            SourceStatement::CreateSource {
                name,
                connection,
                publication,
                tables,
                if_not_exists,
            }
        }
    };
    p.end()?;
    Ok(statement)
}

/// A file source option as parsed (its words as one key): `FORMAT CSV
/// HEADER` is `FORMAT` = `CSV` and the flag `HEADER`.
fn file_option(key: String, value: Option<String>) -> Vec<(String, Option<String>)> {
    let words: Vec<&str> = key.split(' ').collect();
    match words.as_slice() {
        ["FORMAT", format, flags @ ..] if value.is_none() => {
            std::iter::once(("FORMAT".to_string(), Some(format.to_string())))
                .chain(flags.iter().map(|f| (f.to_string(), None)))
                .collect()
        }
        _ => vec![(key, value)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            parse("CREATE SECRET IF NOT EXISTS pw AS 'p''w'").unwrap(),
            SourceStatement::CreateSecret {
                name: "pw".into(),
                value: "p'w".into(),
                if_not_exists: true
            }
        );
        let c = parse(
            "create connection pg to postgres (HOST 'db', PORT 5432, USER 'u', PASSWORD SECRET pw, DATABASE 'd', SSL MODE 'disable')",
        )
        .unwrap();
        let SourceStatement::CreateConnection { name, options, .. } = c else {
            panic!("connection")
        };
        assert_eq!(name, "pg");
        assert_eq!(options[1], ("PORT".into(), OptionValue::Number("5432".into())));
        assert_eq!(options[3], ("PASSWORD".into(), OptionValue::Secret("pw".into())));
        assert_eq!(
            options[5],
            ("SSL MODE".into(), OptionValue::Text("disable".into()))
        );
        assert_eq!(
            parse(
                "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR TABLES (shop.a, b AS c)"
            )
            .unwrap(),
            SourceStatement::CreateSource {
                name: "s".into(),
                connection: "pg".into(),
                publication: "p".into(),
                tables: Some(vec![
                    TableRef {
                        schema: Some("shop".into()),
                        name: "a".into(),
                        alias: None
                    },
                    TableRef {
                        schema: None,
                        name: "b".into(),
                        alias: Some("c".into())
                    }
                ]),
                if_not_exists: false
            }
        );
        assert!(matches!(
            parse("CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR ALL TABLES").unwrap(),
            SourceStatement::CreateSource { tables: None, .. }
        ));
        assert_eq!(
            parse("CREATE SOURCE n FROM LOAD GENERATOR nexmark (EVENTS PER SECOND 100, MAX EVENTS = 5, PREGENERATE) FOR ALL TABLES")
                .unwrap(),
            SourceStatement::CreateGeneratorSource {
                name: "n".into(),
                generator: "NEXMARK".into(),
                options: vec![
                    ("EVENTS PER SECOND".into(), Some("100".into())),
                    ("MAX EVENTS".into(), Some("5".into())),
                    ("PREGENERATE".into(), None),
                ],
                tables: None,
                if_not_exists: false
            }
        );
        assert!(matches!(
            parse("CREATE SOURCE n FROM LOAD GENERATOR NEXMARK FOR TABLES (bid, auction AS a)").unwrap(),
            SourceStatement::CreateGeneratorSource { tables: Some(ref t), .. }
                if t.len() == 2 && t[1].alias.as_deref() == Some("a")
        ));
        assert!(matches!(
            parse("CREATE SOURCE c FROM LOAD GENERATOR COUNTER").unwrap(),
            SourceStatement::CreateGeneratorSource { ref options, .. } if options.is_empty()
        ));
        assert!(parse("CREATE SOURCE c FROM LOAD GENERATOR COUNTER (SEED 1 2)").is_err());
        assert_eq!(
            parse("CREATE SOURCE f (id bigint NOT NULL, name text) FROM FILES 's3://b/p/*.csv' (FORMAT CSV HEADER, DELIMITER ';') WATCH")
                .unwrap(),
            SourceStatement::CreateFileSource {
                name: "f".into(),
                url: "s3://b/p/*.csv".into(),
                columns: Some("id BIGINT NOT NULL, name TEXT".into()),
                options: vec![
                    ("FORMAT".into(), Some("CSV".into())),
                    ("HEADER".into(), None),
                    ("DELIMITER".into(), Some(";".into())),
                    ("WATCH".into(), None),
                ],
                if_not_exists: false
            }
        );
        assert!(matches!(
            parse("CREATE SOURCE f FROM FILES 'file:///d/*.parquet'").unwrap(),
            SourceStatement::CreateFileSource { columns: None, ref options, .. } if options.is_empty()
        ));
        assert!(parse("CREATE SOURCE f (a int) FROM LOAD GENERATOR COUNTER").is_err());
        assert_eq!(
            parse("DROP SOURCE IF EXISTS a, b CASCADE").unwrap(),
            SourceStatement::Drop {
                kind: ObjectKind::Source,
                names: vec!["a".into(), "b".into()],
                if_exists: true,
                cascade: true
            }
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("CREATE SOURCE s FROM MYSQL CONNECTION c").unwrap_err();
        assert!(
            matches!(
                e,
                SqlError::Syntax {
                    position: Some(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(parse("CREATE SECRET s AS 'x' extra").is_err());
        assert!(parse("CREATE CONNECTION c TO POSTGRES (HOST)").is_err());
    }
}
