//! Tokenizer and Pratt parser for the FHIRPath subset.

use super::ParseError;
use super::ast::{BinOp, Expr, Func, Literal, TypeOp, TypeSpec};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    /// `%name` or `%'name'`
    Ext(String),
    /// `$this`, `$index`, `$total`
    Dollar(String),
    Dot,
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    Comma,
    Pipe,
    Eq,
    Ne,
    Equiv,
    NEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Amp,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    /// Identifier was written with backticks (never a keyword).
    quoted: bool,
}

fn err(pos: usize, msg: impl Into<String>) -> ParseError {
    ParseError {
        position: pos,
        message: msg.into(),
    }
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let mut quoted = false;
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                continue;
            }
            b'.' => {
                i += 1;
                Tok::Dot
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b'[' => {
                i += 1;
                Tok::LBrack
            }
            b']' => {
                i += 1;
                Tok::RBrack
            }
            b'{' => {
                i += 1;
                Tok::LBrace
            }
            b'}' => {
                i += 1;
                Tok::RBrace
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'|' => {
                i += 1;
                Tok::Pipe
            }
            b'=' => {
                i += 1;
                Tok::Eq
            }
            b'~' => {
                i += 1;
                Tok::Equiv
            }
            b'!' => match bytes.get(i + 1) {
                Some(b'=') => {
                    i += 2;
                    Tok::Ne
                }
                Some(b'~') => {
                    i += 2;
                    Tok::NEquiv
                }
                _ => return Err(err(i, "unexpected '!'")),
            },
            b'<' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Le
                } else {
                    i += 1;
                    Tok::Lt
                }
            }
            b'>' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Ge
                } else {
                    i += 1;
                    Tok::Gt
                }
            }
            b'+' => {
                i += 1;
                Tok::Plus
            }
            b'-' => {
                i += 1;
                Tok::Minus
            }
            b'*' => {
                i += 1;
                Tok::Star
            }
            b'/' => {
                i += 1;
                Tok::Slash
            }
            b'&' => {
                i += 1;
                Tok::Amp
            }
            b'\'' => {
                let (s, next) = lex_quoted(src, i, b'\'')?;
                i = next;
                Tok::Str(s)
            }
            b'`' => {
                let (s, next) = lex_quoted(src, i, b'`')?;
                i = next;
                quoted = true;
                Tok::Ident(s)
            }
            b'%' => {
                i += 1;
                if bytes.get(i) == Some(&b'\'') || bytes.get(i) == Some(&b'`') {
                    let q = bytes[i];
                    let (s, next) = lex_quoted(src, i, q)?;
                    i = next;
                    Tok::Ext(s)
                } else {
                    let s = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    if s == i {
                        return Err(err(start, "empty %variable"));
                    }
                    Tok::Ext(src[s..i].to_string())
                }
            }
            b'$' => {
                i += 1;
                let s = i;
                while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                Tok::Dollar(src[s..i].to_string())
            }
            b'@' => return Err(err(i, "date/time literals are not supported")),
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                Tok::Num(src[start..i].to_string())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_string())
            }
            _ => {
                return Err(err(
                    i,
                    format!(
                        "unexpected character {:?}",
                        src[i..].chars().next().unwrap_or('?')
                    ),
                ));
            }
        };
        out.push(Token {
            tok,
            pos: start,
            quoted,
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
        quoted: false,
    });
    Ok(out)
}

/// Lex a quoted string starting at `start` (the quote), handling FHIRPath escapes.
fn lex_quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = start + 1 + off;
        if c as u32 == u32::from(quote) {
            return Ok((out, at + 1));
        }
        if c == '\\' {
            let Some((_, e)) = chars.next() else {
                return Err(err(at, "unterminated escape"));
            };
            match e {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let mut code = 0u32;
                    for _ in 0..4 {
                        let Some((_, h)) = chars.next() else {
                            return Err(err(at, "short \\u escape"));
                        };
                        let Some(d) = h.to_digit(16) else {
                            return Err(err(at, "bad \\u escape"));
                        };
                        code = code * 16 + d;
                    }
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            }
        } else {
            out.push(c);
        }
    }
    Err(err(start, "unterminated string"))
}

pub(super) fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
    };
    let e = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(err(p.pos(), "unexpected trailing input"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

/// Nesting limit, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// Binding powers (higher binds tighter), FHIRPath §6 precedence.
fn infix_bp(t: &Token) -> Option<(u8, Infix)> {
    let op = match &t.tok {
        Tok::Pipe => (7, Infix::Bin(BinOp::Union)),
        Tok::Eq => (5, Infix::Bin(BinOp::Eq)),
        Tok::Ne => (5, Infix::Bin(BinOp::Ne)),
        Tok::Equiv => (5, Infix::Bin(BinOp::Equiv)),
        Tok::NEquiv => (5, Infix::Bin(BinOp::NotEquiv)),
        Tok::Lt => (6, Infix::Bin(BinOp::Lt)),
        Tok::Le => (6, Infix::Bin(BinOp::Le)),
        Tok::Gt => (6, Infix::Bin(BinOp::Gt)),
        Tok::Ge => (6, Infix::Bin(BinOp::Ge)),
        Tok::Plus => (9, Infix::Bin(BinOp::Add)),
        Tok::Minus => (9, Infix::Bin(BinOp::Sub)),
        Tok::Amp => (9, Infix::Bin(BinOp::Concat)),
        Tok::Star => (10, Infix::Bin(BinOp::Mul)),
        Tok::Slash => (10, Infix::Bin(BinOp::Div)),
        Tok::Ident(s) if !t.quoted => match s.as_str() {
            "implies" => (1, Infix::Bin(BinOp::Implies)),
            "or" => (2, Infix::Bin(BinOp::Or)),
            "xor" => (2, Infix::Bin(BinOp::Xor)),
            "and" => (3, Infix::Bin(BinOp::And)),
            "in" => (4, Infix::Bin(BinOp::In)),
            "contains" => (4, Infix::Bin(BinOp::Contains)),
            "is" => (8, Infix::Type(TypeOp::Is)),
            "as" => (8, Infix::Type(TypeOp::As)),
            "div" => (10, Infix::Bin(BinOp::IntDiv)),
            "mod" => (10, Infix::Bin(BinOp::Mod)),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

enum Infix {
    Bin(BinOp),
    Type(TypeOp),
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }
    fn next(&mut self) -> Token {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn expect(&mut self, t: &Tok) -> Result<(), ParseError> {
        if self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(err(
                self.pos(),
                format!("expected {t:?}, found {:?}", self.peek()),
            ))
        }
    }

    fn expr(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(self.pos(), "expression nested too deeply"));
        }
        let r = self.expr_inner(min_bp);
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.prefix()?;
        loop {
            // postfix: invocation and indexer bind tightest
            match self.peek() {
                Tok::Dot => {
                    self.next();
                    lhs = self.invocation(Some(lhs))?;
                    continue;
                }
                Tok::LBrack => {
                    self.next();
                    let idx = self.expr(0)?;
                    self.expect(&Tok::RBrack)?;
                    lhs = Expr::Indexer(Box::new(lhs), Box::new(idx));
                    continue;
                }
                _ => {}
            }
            let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
            let Some((bp, op)) = infix_bp(&t) else { break };
            if bp <= min_bp {
                break;
            }
            self.next();
            lhs = match op {
                Infix::Bin(op) => {
                    let rhs = self.expr(bp)?;
                    Expr::Binary(op, Box::new(lhs), Box::new(rhs))
                }
                Infix::Type(op) => {
                    let ts = self.type_spec()?;
                    Expr::TypeOp(op, Box::new(lhs), ts)
                }
            };
        }
        Ok(lhs)
    }

    fn type_spec(&mut self) -> Result<TypeSpec, ParseError> {
        let pos = self.pos();
        let Tok::Ident(first) = self.next().tok else {
            return Err(err(pos, "expected a type name"));
        };
        if self.peek() == &Tok::Dot
            && matches!(
                self.toks.get(self.i + 1).map(|t| &t.tok),
                Some(Tok::Ident(_))
            )
        {
            self.next();
            let Tok::Ident(name) = self.next().tok else {
                return Err(err(pos, "expected a type name"));
            };
            return Ok(TypeSpec {
                namespace: Some(first),
                name,
            });
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn prefix(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Literal(Literal::Str(s)))
            }
            Tok::Num(n) => {
                self.next();
                let v: f64 = n.parse().map_err(|_| err(pos, "bad number"))?;
                Ok(Expr::Literal(Literal::Num(v)))
            }
            Tok::Ext(name) => {
                self.next();
                Ok(Expr::Var(name))
            }
            Tok::Dollar(name) => {
                self.next();
                match name.as_str() {
                    "this" => Ok(Expr::This),
                    "index" => Ok(Expr::IndexVar),
                    _ => Err(err(pos, format!("unsupported ${name}"))),
                }
            }
            Tok::LParen => {
                self.next();
                let e = self.expr(0)?;
                self.expect(&Tok::RParen)?;
                Ok(e)
            }
            Tok::LBrace => {
                self.next();
                self.expect(&Tok::RBrace)?;
                Ok(Expr::Empty)
            }
            Tok::Minus | Tok::Plus => {
                let neg = self.peek() == &Tok::Minus;
                self.next();
                let e = self.expr(10)?;
                Ok(if neg { Expr::Negate(Box::new(e)) } else { e })
            }
            Tok::Ident(s) => {
                let quoted = self.toks[self.i].quoted;
                if !quoted && (s == "true" || s == "false") {
                    self.next();
                    return Ok(Expr::Literal(Literal::Bool(s == "true")));
                }
                self.invocation(None)
            }
            other => Err(err(pos, format!("unexpected {other:?}"))),
        }
    }

    /// `name` or `name(args)` applied to `focus` (None = the current focus).
    fn invocation(&mut self, focus: Option<Expr>) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let name = match self.next().tok {
            Tok::Ident(s) => s,
            Tok::Dollar(s) if s == "this" => return Ok(Expr::This),
            other => return Err(err(pos, format!("expected an identifier, found {other:?}"))),
        };
        if self.peek() != &Tok::LParen {
            return Ok(Expr::Member(focus.map(Box::new), name));
        }
        self.next();
        let mut args = Vec::new();
        if self.peek() != &Tok::RParen {
            loop {
                args.push(self.expr(0)?);
                if self.peek() == &Tok::Comma {
                    self.next();
                    continue;
                }
                break;
            }
        }
        self.expect(&Tok::RParen)?;
        let func = Func::resolve(&name, args).map_err(|m| err(pos, m))?;
        Ok(Expr::Call(focus.map(Box::new), func))
    }
}
