//! Lexer and parser for the Python subset that GenCAD-Code CadQuery programs use.
//!
//! Statements: `import cadquery as cq`, `name = expr`, bare expressions; comments and blank lines.
//! Expressions: names, int/float literals (incl. `6.1e-17`), `True`/`False`, tuples and lists, attribute
//! access, calls with positional and keyword arguments, unary `-`/`+`, and `+ - * /` on numbers.
//! Everything else is a [`CadError`] with the line and column of the construct it names.

use super::{CadError, FailureKind, Limits};

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Name(String),
    Num(f64),
    Str,
    Op(&'static str),
    Newline,
    /// Leading whitespace on a line with code (blocks are not supported; the parser reports it).
    Indent,
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Name(String, Pos),
    Num(f64, Pos),
    Bool(bool, Pos),
    Tuple(Vec<Expr>, Pos),
    Attr(Box<Expr>, String, Pos),
    Call(Box<Expr>, Vec<Expr>, Vec<(String, Expr, Pos)>, Pos),
    Neg(Box<Expr>, Pos),
    Bin(char, Box<Expr>, Box<Expr>, Pos),
}

impl Expr {
    pub fn pos(&self) -> Pos {
        match self {
            Expr::Name(_, p)
            | Expr::Num(_, p)
            | Expr::Bool(_, p)
            | Expr::Tuple(_, p)
            | Expr::Attr(_, _, p)
            | Expr::Call(_, _, _, p)
            | Expr::Neg(_, p)
            | Expr::Bin(_, _, _, p) => *p,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Import(Pos),
    Assign(String, Expr, Pos),
    Expr(Expr),
}

fn err(kind: FailureKind, p: Pos, msg: impl Into<String>) -> CadError {
    CadError {
        kind,
        line: p.line,
        col: p.col,
        message: msg.into(),
    }
}

/// Split source into tokens with positions (1-based line and column).
pub fn lex(src: &str, limits: &Limits) -> Result<Vec<(Tok, Pos)>, CadError> {
    if src.len() > limits.max_source_bytes {
        return Err(err(
            FailureKind::Budget,
            Pos { line: 1, col: 1 },
            format!(
                "program is {} bytes, over the limit of {}",
                src.len(),
                limits.max_source_bytes
            ),
        ));
    }
    let mut toks = Vec::new();
    let b = src.as_bytes();
    let (mut i, mut line, mut line_start) = (0usize, 1usize, 0usize);
    let mut depth = 0usize;
    let mut at_line_start = true;
    // column of byte `col_i` (counted incrementally: recounting from the line start is quadratic on long lines)
    let (mut col_i, mut col) = (0usize, 1usize);
    while i < b.len() {
        let c = b[i];
        if col_i < line_start {
            (col_i, col) = (line_start, 1);
        }
        col += src[col_i..i].chars().count();
        col_i = i;
        let pos = Pos { line, col };
        if toks.len() > limits.max_tokens {
            return Err(err(
                FailureKind::Budget,
                pos,
                format!("more than {} tokens", limits.max_tokens),
            ));
        }
        if at_line_start && depth == 0 && (c == b' ' || c == b'\t') {
            // indentation is only allowed on blank / comment lines
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j < b.len() && b[j] != b'\n' && b[j] != b'\r' && b[j] != b'#' {
                toks.push((Tok::Indent, pos));
            }
            i = j;
            continue;
        }
        at_line_start = false;
        match c {
            b'\n' => {
                if depth == 0 && !matches!(toks.last(), Some((Tok::Newline, _)) | None) {
                    toks.push((Tok::Newline, pos));
                }
                i += 1;
                line += 1;
                line_start = i;
                at_line_start = true;
            }
            b' ' | b'\t' | b'\r' | b'\x0c' => i += 1,
            b'\\' if b.get(i + 1) == Some(&b'\n') => {
                i += 2;
                line += 1;
                line_start = i;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                    let mut j = i + 1;
                    if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                        j += 1;
                    }
                    if j < b.len() && b[j].is_ascii_digit() {
                        i = j;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
                    return Err(err(
                        FailureKind::Syntax,
                        pos,
                        format!("invalid number literal `{}`", &src[s..=i]),
                    ));
                }
                let text = src[s..i].replace('_', "");
                let v: f64 = text.parse().map_err(|_| {
                    err(
                        FailureKind::Syntax,
                        pos,
                        format!("invalid number literal `{}`", &src[s..i]),
                    )
                })?;
                toks.push((Tok::Num(v), pos));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                toks.push((Tok::Name(src[s..i].to_string()), pos));
            }
            b'"' | b'\'' => {
                // strings are lexed only to report them precisely
                let q = c;
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                toks.push((Tok::Str, pos));
            }
            _ => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op: &'static str = match two {
                    "**" => "**",
                    "//" => "//",
                    "==" => "==",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    "+=" => "+=",
                    "-=" => "-=",
                    "*=" => "*=",
                    "/=" => "/=",
                    _ => match c {
                        b'(' => "(",
                        b')' => ")",
                        b'[' => "[",
                        b']' => "]",
                        b'{' => "{",
                        b'}' => "}",
                        b',' => ",",
                        b'.' => ".",
                        b'=' => "=",
                        b'+' => "+",
                        b'-' => "-",
                        b'*' => "*",
                        b'/' => "/",
                        b':' => ":",
                        b';' => ";",
                        b'%' => "%",
                        b'<' => "<",
                        b'>' => ">",
                        b'@' => "@",
                        b'&' => "&",
                        b'|' => "|",
                        b'^' => "^",
                        b'~' => "~",
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or('?');
                            return Err(err(
                                FailureKind::Syntax,
                                pos,
                                format!("unexpected character {ch:?}"),
                            ));
                        }
                    },
                };
                match op {
                    "(" | "[" | "{" => {
                        depth += 1;
                        if depth > limits.max_depth {
                            return Err(err(
                                FailureKind::Budget,
                                pos,
                                format!("brackets nested deeper than {}", limits.max_depth),
                            ));
                        }
                    }
                    ")" | "]" | "}" => depth = depth.saturating_sub(1),
                    _ => {}
                }
                i += op.len();
                toks.push((Tok::Op(op), pos));
            }
        }
    }
    let pos = Pos {
        line,
        col: src[line_start..].chars().count() + 1,
    };
    if !matches!(toks.last(), Some((Tok::Newline, _)) | None) {
        toks.push((Tok::Newline, pos));
    }
    toks.push((Tok::Eof, pos));
    Ok(toks)
}

struct Parser<'a> {
    toks: &'a [(Tok, Pos)],
    i: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn pos(&self) -> Pos {
        self.toks[self.i].1
    }
    fn bump(&mut self) -> (Tok, Pos) {
        let t = self.toks[self.i].clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }
    fn expect(&mut self, op: &str) -> Result<Pos, CadError> {
        if self.is_op(op) {
            Ok(self.bump().1)
        } else {
            Err(err(
                FailureKind::Syntax,
                self.pos(),
                format!("expected `{op}`, found {}", describe(self.peek())),
            ))
        }
    }

    fn stmt(&mut self) -> Result<Stmt, CadError> {
        let pos = self.pos();
        if *self.peek() == Tok::Indent {
            return Err(err(
                FailureKind::Syntax,
                pos,
                "unexpected indent (blocks are not supported)",
            ));
        }
        if let Tok::Name(n) = self.peek().clone() {
            match n.as_str() {
                "import" => {
                    self.bump();
                    let m = self.dotted()?;
                    if m != "cadquery" {
                        return Err(err(
                            FailureKind::Unsupported,
                            pos,
                            format!(
                                "import of `{m}` is not supported (only `import cadquery as cq`)"
                            ),
                        ));
                    }
                    match self.bump() {
                        (Tok::Name(a), _) if a == "as" => {}
                        (t, p) => {
                            return Err(err(
                                FailureKind::Unsupported,
                                p,
                                format!("expected `as cq`, found {}", describe(&t)),
                            ));
                        }
                    }
                    match self.bump() {
                        (Tok::Name(a), _) if a == "cq" => {}
                        (t, p) => {
                            return Err(err(
                                FailureKind::Unsupported,
                                p,
                                format!(
                                    "cadquery must be imported as `cq`, found {}",
                                    describe(&t)
                                ),
                            ));
                        }
                    }
                    return Ok(Stmt::Import(pos));
                }
                "from" | "def" | "class" | "for" | "while" | "if" | "with" | "try" | "lambda"
                | "return" | "del" | "global" | "nonlocal" | "yield" | "async" | "await"
                | "raise" | "assert" | "pass" | "break" | "continue" | "elif" | "else" => {
                    return Err(err(
                        FailureKind::Unsupported,
                        pos,
                        format!("`{n}` statements are not supported"),
                    ));
                }
                _ => {}
            }
            if matches!(self.toks.get(self.i + 1), Some((Tok::Op("="), _))) {
                if n.starts_with("__") {
                    return Err(err(
                        FailureKind::Unsupported,
                        pos,
                        format!("dunder name `{n}` is not supported"),
                    ));
                }
                self.bump();
                self.bump();
                let e = self.expr()?;
                if self.is_op("=") {
                    return Err(err(
                        FailureKind::Unsupported,
                        self.pos(),
                        "chained assignment is not supported",
                    ));
                }
                return Ok(Stmt::Assign(n, e, pos));
            }
        }
        let e = self.expr()?;
        if let Tok::Op(op) = self.peek() {
            if matches!(*op, "=" | "+=" | "-=" | "*=" | "/=") {
                return Err(err(
                    FailureKind::Unsupported,
                    self.pos(),
                    format!(
                        "assignment with `{op}` to this target is not supported (only `name = ...`)"
                    ),
                ));
            }
        }
        Ok(Stmt::Expr(e))
    }

    fn dotted(&mut self) -> Result<String, CadError> {
        let mut s = match self.bump() {
            (Tok::Name(n), _) => n,
            (t, p) => {
                return Err(err(
                    FailureKind::Syntax,
                    p,
                    format!("expected a module name, found {}", describe(&t)),
                ));
            }
        };
        while self.is_op(".") {
            self.bump();
            match self.bump() {
                (Tok::Name(n), _) => {
                    s.push('.');
                    s.push_str(&n);
                }
                (t, p) => {
                    return Err(err(
                        FailureKind::Syntax,
                        p,
                        format!("expected a name, found {}", describe(&t)),
                    ));
                }
            }
        }
        Ok(s)
    }

    fn enter(&mut self) -> Result<(), CadError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(err(
                FailureKind::Budget,
                self.pos(),
                format!("expression nested deeper than {}", self.max_depth),
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, CadError> {
        self.enter()?;
        let mut lhs = self.term()?;
        while let Tok::Op(op @ ("+" | "-")) = self.peek() {
            let c = op.chars().next().unwrap();
            let p = self.bump().1;
            let rhs = self.term()?;
            lhs = Expr::Bin(c, Box::new(lhs), Box::new(rhs), p);
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr, CadError> {
        let mut lhs = self.unary()?;
        loop {
            match self.peek() {
                Tok::Op(op @ ("*" | "/")) => {
                    let c = op.chars().next().unwrap();
                    let p = self.bump().1;
                    let rhs = self.unary()?;
                    lhs = Expr::Bin(c, Box::new(lhs), Box::new(rhs), p);
                }
                Tok::Op(
                    op @ ("**" | "//" | "%" | "@" | "&" | "|" | "^" | "<" | ">" | "==" | "!="
                    | "<=" | ">="),
                ) => {
                    return Err(err(
                        FailureKind::Unsupported,
                        self.pos(),
                        format!("operator `{op}` is not supported"),
                    ));
                }
                _ => return Ok(lhs),
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, CadError> {
        if self.is_op("-") || self.is_op("+") {
            let (t, p) = self.bump();
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(if t == Tok::Op("-") {
                Expr::Neg(Box::new(e), p)
            } else {
                e
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, CadError> {
        let mut e = self.atom()?;
        loop {
            if self.is_op(".") {
                self.bump();
                let (t, p) = self.bump();
                let Tok::Name(n) = t else {
                    return Err(err(
                        FailureKind::Syntax,
                        p,
                        format!(
                            "expected an attribute name after `.`, found {}",
                            describe(&t)
                        ),
                    ));
                };
                if n.starts_with("__") {
                    return Err(err(
                        FailureKind::Unsupported,
                        p,
                        format!("dunder attribute `{n}` is not supported"),
                    ));
                }
                e = Expr::Attr(Box::new(e), n, p);
            } else if self.is_op("(") {
                let p = self.bump().1;
                self.enter()?;
                let (args, kwargs) = self.call_args()?;
                self.depth -= 1;
                e = Expr::Call(Box::new(e), args, kwargs, p);
            } else if self.is_op("[") {
                return Err(err(
                    FailureKind::Unsupported,
                    self.pos(),
                    "indexing with `[...]` is not supported",
                ));
            } else {
                return Ok(e);
            }
        }
    }

    fn call_args(&mut self) -> Result<(Vec<Expr>, Vec<(String, Expr, Pos)>), CadError> {
        let (mut args, mut kwargs) = (Vec::new(), Vec::new());
        while !self.is_op(")") {
            if self.is_op("*") || self.is_op("**") {
                return Err(err(
                    FailureKind::Unsupported,
                    self.pos(),
                    "argument unpacking is not supported",
                ));
            }
            if let (Tok::Name(n), Some((Tok::Op("="), _))) =
                (self.peek().clone(), self.toks.get(self.i + 1))
            {
                let p = self.pos();
                self.bump();
                self.bump();
                kwargs.push((n, self.expr()?, p));
            } else {
                if !kwargs.is_empty() {
                    return Err(err(
                        FailureKind::Syntax,
                        self.pos(),
                        "positional argument follows keyword argument",
                    ));
                }
                args.push(self.expr()?);
            }
            if !self.is_op(",") {
                break;
            }
            self.bump();
        }
        self.expect(")")?;
        Ok((args, kwargs))
    }

    fn atom(&mut self) -> Result<Expr, CadError> {
        let (t, p) = self.bump();
        match t {
            Tok::Num(v) => Ok(Expr::Num(v, p)),
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Expr::Bool(true, p)),
                "False" => Ok(Expr::Bool(false, p)),
                "None" | "lambda" | "not" | "and" | "or" | "in" | "is" | "if" | "else" | "for"
                | "yield" | "await" => Err(err(
                    FailureKind::Unsupported,
                    p,
                    format!("`{n}` is not supported"),
                )),
                _ if n.starts_with("__") => Err(err(
                    FailureKind::Unsupported,
                    p,
                    format!("dunder name `{n}` is not supported"),
                )),
                _ => Ok(Expr::Name(n, p)),
            },
            Tok::Op(o @ ("(" | "[")) => {
                let close = if o == "(" { ")" } else { "]" };
                self.enter()?;
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.is_op(close) {
                    items.push(self.expr()?);
                    trailing_comma = false;
                    if !self.is_op(",") {
                        break;
                    }
                    self.bump();
                    trailing_comma = true;
                }
                self.expect(close)?;
                self.depth -= 1;
                if o == "(" && items.len() == 1 && !trailing_comma {
                    return Ok(items.pop().unwrap());
                }
                Ok(Expr::Tuple(items, p))
            }
            Tok::Str => Err(err(
                FailureKind::Unsupported,
                p,
                "string literals are not supported here",
            )),
            Tok::Op("{") => Err(err(
                FailureKind::Unsupported,
                p,
                "dict / set literals are not supported",
            )),
            t => Err(err(
                FailureKind::Syntax,
                p,
                format!("unexpected {}", describe(&t)),
            )),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Name(n) => format!("name `{n}`"),
        Tok::Num(v) => format!("number {v}"),
        Tok::Str => "a string".into(),
        Tok::Op(o) => format!("`{o}`"),
        Tok::Newline => "end of line".into(),
        Tok::Indent => "an indent".into(),
        Tok::Eof => "end of file".into(),
    }
}

/// Parse a whole program into statements.
pub fn parse(src: &str, limits: &Limits) -> Result<Vec<Stmt>, CadError> {
    let toks = lex(src, limits)?;
    let mut p = Parser {
        toks: &toks,
        i: 0,
        depth: 0,
        max_depth: limits.max_depth,
    };
    let mut out = Vec::new();
    while *p.peek() != Tok::Eof {
        if *p.peek() == Tok::Newline || p.is_op(";") {
            p.bump();
            continue;
        }
        if out.len() >= limits.max_statements {
            return Err(err(
                FailureKind::Budget,
                p.pos(),
                format!("more than {} statements", limits.max_statements),
            ));
        }
        out.push(p.stmt()?);
        if !(matches!(p.peek(), Tok::Newline | Tok::Eof) || p.is_op(";")) {
            return Err(err(
                FailureKind::Syntax,
                p.pos(),
                format!("expected end of statement, found {}", describe(p.peek())),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gencad_lines() {
        let src = "import cadquery as cq\n# c\nwp = cq.Workplane(cq.Plane(cq.Vector(-0.75, 6.123233995736766e-17, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nl=wp.moveTo(1.5, 0.0).threePointArc((1.0, -2), (3, 4)).close()\ns=wp.add(l).extrude(-0.25, both=True)\n";
        let st = parse(src, &Limits::default()).unwrap();
        assert_eq!(st.len(), 4);
        assert!(
            matches!(st[3], Stmt::Assign(ref n, Expr::Call(_, ref a, ref k, _), _) if n == "s" && a.len() == 1 && k.len() == 1)
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("import os\n", &Limits::default()).unwrap_err();
        assert_eq!((e.line, e.col, e.kind), (1, 1, FailureKind::Unsupported));
        let e = parse("a = 1\n  b = 2\n", &Limits::default()).unwrap_err();
        assert_eq!((e.line, e.kind), (2, FailureKind::Syntax));
        let e = parse("x = (1, 2\n", &Limits::default()).unwrap_err();
        assert_eq!(e.kind, FailureKind::Syntax);
        let e = parse("x = 1.5.3\n", &Limits::default()).unwrap_err();
        assert_eq!(e.kind, FailureKind::Syntax);
        let deep = format!("x = {}1{}\n", "(".repeat(500), ")".repeat(500));
        assert_eq!(
            parse(&deep, &Limits::default()).unwrap_err().kind,
            FailureKind::Budget
        );
        let e = parse("x = open('f')\n", &Limits::default()).unwrap_err();
        assert_eq!((e.line, e.col), (1, 10));
    }
}
