//! The expression language used by `filter`, `derive` and `assert`.
//!
//! It reads like SQL, which is what data engineers already write: `passenger_count > 0 and
//! trip_distance > 0`, `date(lpep_pickup_datetime)`, `payment_type in (1, 2)`, `x is not null`.
//! Strings are in single quotes; a column whose name is not a plain identifier is written in
//! backticks. `param.NAME` reads a pipeline parameter and `partition.start` / `partition.end` /
//! `partition.key` / `partition.year` ... read the run's partition. The grammar is small enough
//! that a hand-written precedence-climbing parser gives exact spans and clear messages.

use crate::diagnostic::Span;
use crate::types::Literal;

/// A parsed expression. Spans are byte offsets inside the expression text.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it is in the expression text.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A column of the input.
    Column(String),
    /// A constant.
    Literal(Literal),
    /// `null`.
    Null,
    /// `param.NAME`.
    Param(String),
    /// `partition.FIELD`.
    Partition(String),
    /// `not x`, `-x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a + b`, `a and b`, `a < b`, ...
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x is null`, `x is not null`.
    IsNull {
        /// The tested expression.
        expr: Box<Expr>,
        /// True for `is not null`.
        negated: bool,
    },
    /// `x in (1, 2)`, `x not in ('a')`.
    InList {
        /// The tested expression.
        expr: Box<Expr>,
        /// The allowed values.
        list: Vec<Expr>,
        /// True for `not in`.
        negated: bool,
    },
    /// `date(x)`, `coalesce(a, b)`, ...
    Call {
        /// The function's name, lowercased.
        name: String,
        /// Where the name is.
        name_span: Span,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// `sum(fare) over (vendor_id)`: an aggregate computed per group of rows and repeated on
    /// every row of the group, as SQL's window functions.
    Window {
        /// The aggregate call.
        call: Box<Expr>,
        /// The columns whose values form the groups; empty for the whole frame.
        partition_by: Vec<Expr>,
    },
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `not`
    Not,
    /// `-`
    Neg,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `=` or `==`
    Eq,
    /// `!=` or `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
        }
    }

    /// Whether the operator compares its operands.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }

    /// Whether the operator is arithmetic.
    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem
        )
    }
}

/// A syntax error inside an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong.
    pub message: String,
    /// Where, inside the expression text.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    QuotedIdent(String),
    Int(i64),
    Float(f64),
    Str(String),
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<(Token, Span)>, ParseError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((Token::Ident(text[start..i].to_string()), start..i));
            continue;
        }
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                i += 1;
            }
            let is_float = i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit();
            if is_float {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let digits = text[start..i].replace('_', "");
            let token = if is_float {
                Token::Float(digits.parse().map_err(|_| ParseError {
                    message: "invalid number".into(),
                    span: start..i,
                })?)
            } else {
                Token::Int(digits.parse().map_err(|_| ParseError {
                    message: "integer too large".into(),
                    span: start..i,
                })?)
            };
            tokens.push((token, start..i));
            continue;
        }
        if c == b'\'' || c == b'`' {
            let quote = c;
            i += 1;
            let mut value = String::new();
            loop {
                match text[i..].chars().next() {
                    None => {
                        let what = if quote == b'\'' {
                            "string"
                        } else {
                            "quoted column name"
                        };
                        return Err(ParseError {
                            message: format!("unterminated {what}"),
                            span: start..text.len(),
                        });
                    }
                    // A doubled quote stands for the quote itself, as in SQL.
                    Some(ch) if ch as u32 == u32::from(quote) => {
                        if bytes.get(i + 1) == Some(&quote) {
                            value.push(ch);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(ch) => {
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            let token = if quote == b'\'' {
                Token::Str(value)
            } else {
                Token::QuotedIdent(value)
            };
            tokens.push((token, start..i));
            continue;
        }
        const SYMBOLS: [&str; 17] = [
            "==", "!=", "<>", "<=", ">=", "<", ">", "=", "+", "-", "*", "/", "%", "(", ")", ",",
            ".",
        ];
        match SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            Some(symbol) => {
                i += symbol.len();
                tokens.push((Token::Symbol(symbol), start..i));
            }
            None => {
                let ch = text[i..].chars().next().unwrap_or('?');
                let help = if ch == '"' {
                    " (strings use single quotes: 'Y')"
                } else {
                    ""
                };
                return Err(ParseError {
                    message: format!("unexpected character `{ch}`{help}"),
                    span: start..start + ch.len_utf8(),
                });
            }
        }
    }
    Ok(tokens)
}

/// Parses an expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        end: text.len(),
        depth: 0,
    };
    let expr = parser.expr(0)?;
    match parser.peek() {
        None => Ok(expr),
        Some((_, span)) => Err(ParseError {
            message: "unexpected text after the expression".into(),
            span: span.start..text.len(),
        }),
    }
}

struct Parser {
    tokens: Vec<(Token, Span)>,
    position: usize,
    end: usize,
    /// How deeply the expression being parsed is nested, bounded by `MAX_DEPTH`.
    depth: usize,
}

/// The deepest nesting of parentheses, operators and calls the parser follows. Real expressions
/// stay far below; without a bound, `((((...` recursed until the stack overflowed (found by
/// cargo-fuzz).
const MAX_DEPTH: usize = 100;

fn is_keyword(token: &Token, keyword: &str) -> bool {
    matches!(token, Token::Ident(name) if name.eq_ignore_ascii_case(keyword))
}

impl Parser {
    fn peek(&self) -> Option<&(Token, Span)> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<(Token, Span)> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|(t, _)| is_keyword(t, keyword))
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some((Token::Symbol(s), _)) if *s == symbol)
    }

    fn error_here(&self, message: &str) -> ParseError {
        match self.peek() {
            Some((_, span)) => ParseError {
                message: message.to_string(),
                span: span.clone(),
            },
            None => ParseError {
                message: format!("{message}, found the end of the expression"),
                span: self.end..self.end,
            },
        }
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<Span, ParseError> {
        if self.peek_symbol(symbol) {
            Ok(self.next().map(|(_, span)| span).unwrap_or_default())
        } else {
            Err(self.error_here(&format!("expected `{symbol}`")))
        }
    }

    /// Precedence climbing, bounded in depth. Levels: or (1) < and (2) < not (3) <
    /// comparison (4) < + - (5) < * / % (6).
    fn expr(&mut self, min_level: u8) -> Result<Expr, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_here(&format!(
                "the expression is nested more than {MAX_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let expr = self.climb(min_level);
        self.depth -= 1;
        expr
    }

    fn climb(&mut self, min_level: u8) -> Result<Expr, ParseError> {
        let mut left = self.prefix()?;
        while let Some((token, _)) = self.peek() {
            let (op, level) = match token {
                t if is_keyword(t, "or") => (Some(BinaryOp::Or), 1),
                t if is_keyword(t, "and") => (Some(BinaryOp::And), 2),
                t if is_keyword(t, "is") || is_keyword(t, "in") || is_keyword(t, "not") => {
                    (None, 4)
                }
                Token::Symbol(s) => match *s {
                    "=" | "==" => (Some(BinaryOp::Eq), 4),
                    "!=" | "<>" => (Some(BinaryOp::NotEq), 4),
                    "<" => (Some(BinaryOp::Lt), 4),
                    "<=" => (Some(BinaryOp::LtEq), 4),
                    ">" => (Some(BinaryOp::Gt), 4),
                    ">=" => (Some(BinaryOp::GtEq), 4),
                    "+" => (Some(BinaryOp::Add), 5),
                    "-" => (Some(BinaryOp::Sub), 5),
                    "*" => (Some(BinaryOp::Mul), 6),
                    "/" => (Some(BinaryOp::Div), 6),
                    "%" => (Some(BinaryOp::Rem), 6),
                    _ => break,
                },
                _ => break,
            };
            if level < min_level {
                break;
            }
            match op {
                Some(op) => {
                    self.next();
                    let right = self.expr(level + 1)?;
                    let span = left.span.start..right.span.end;
                    left = Expr {
                        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                        span,
                    };
                }
                None => left = self.postfix(left)?,
            }
        }
        Ok(left)
    }

    /// `is [not] null` and `[not] in (...)`.
    fn postfix(&mut self, left: Expr) -> Result<Expr, ParseError> {
        if self.peek_keyword("is") {
            self.next();
            let negated = self.peek_keyword("not");
            if negated {
                self.next();
            }
            if !self.peek_keyword("null") {
                return Err(self.error_here("expected `null` after `is`"));
            }
            let (_, null_span) = self.next().unwrap_or((Token::Symbol(""), 0..0));
            let span = left.span.start..null_span.end;
            return Ok(Expr {
                kind: ExprKind::IsNull {
                    expr: Box::new(left),
                    negated,
                },
                span,
            });
        }
        let negated = self.peek_keyword("not");
        if negated {
            self.next();
        }
        if !self.peek_keyword("in") {
            return Err(self.error_here("expected `in` after `not`"));
        }
        self.next();
        self.expect_symbol("(")?;
        let mut list = Vec::new();
        if !self.peek_symbol(")") {
            loop {
                list.push(self.expr(5)?);
                if self.peek_symbol(",") {
                    self.next();
                } else {
                    break;
                }
            }
        }
        let close = self.expect_symbol(")")?;
        let span = left.span.start..close.end;
        Ok(Expr {
            kind: ExprKind::InList {
                expr: Box::new(left),
                list,
                negated,
            },
            span,
        })
    }

    fn prefix(&mut self) -> Result<Expr, ParseError> {
        let Some((token, span)) = self.next() else {
            return Err(ParseError {
                message: "expected an expression".into(),
                span: self.end..self.end,
            });
        };
        match token {
            Token::Int(i) => Ok(Expr {
                kind: ExprKind::Literal(Literal::Int(i)),
                span,
            }),
            Token::Float(x) => Ok(Expr {
                kind: ExprKind::Literal(Literal::Float(x)),
                span,
            }),
            Token::Str(s) => Ok(Expr {
                kind: ExprKind::Literal(Literal::String(s)),
                span,
            }),
            Token::QuotedIdent(name) => Ok(Expr {
                kind: ExprKind::Column(name),
                span,
            }),
            Token::Symbol("(") => {
                let inner = self.expr(0)?;
                let close = self.expect_symbol(")")?;
                Ok(Expr {
                    kind: inner.kind,
                    span: span.start..close.end,
                })
            }
            Token::Symbol("-") => {
                let operand = self.expr(7)?;
                let span = span.start..operand.span.end;
                Ok(Expr {
                    kind: ExprKind::Unary(UnaryOp::Neg, Box::new(operand)),
                    span,
                })
            }
            Token::Ident(name) => self.identifier(name, span),
            Token::Symbol(symbol) => Err(ParseError {
                message: format!("expected an expression, found `{symbol}`"),
                span,
            }),
        }
    }

    /// `CALL over (a, b)`: the call becomes a window expression; without `over` it stays a call.
    fn window(&mut self, call: Expr) -> Result<Expr, ParseError> {
        if !self.peek_keyword("over") {
            return Ok(call);
        }
        self.next();
        self.expect_symbol("(")?;
        let mut partition_by = Vec::new();
        if !self.peek_symbol(")") {
            loop {
                partition_by.push(self.expr(0)?);
                if self.peek_symbol(",") {
                    self.next();
                } else {
                    break;
                }
            }
        }
        let close = self.expect_symbol(")")?;
        let span = call.span.start..close.end;
        Ok(Expr {
            kind: ExprKind::Window {
                call: Box::new(call),
                partition_by,
            },
            span,
        })
    }

    fn identifier(&mut self, name: String, span: Span) -> Result<Expr, ParseError> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "true" | "false" => {
                return Ok(Expr {
                    kind: ExprKind::Literal(Literal::Bool(lower == "true")),
                    span,
                });
            }
            "null" => {
                return Ok(Expr {
                    kind: ExprKind::Null,
                    span,
                });
            }
            "not" => {
                let operand = self.expr(3)?;
                let span = span.start..operand.span.end;
                return Ok(Expr {
                    kind: ExprKind::Unary(UnaryOp::Not, Box::new(operand)),
                    span,
                });
            }
            "and" | "or" | "is" | "in" => {
                return Err(ParseError {
                    message: format!("expected an expression, found the keyword `{name}`"),
                    span,
                });
            }
            _ => {}
        }
        if (lower == "param" || lower == "partition") && self.peek_symbol(".") {
            self.next();
            let Some((Token::Ident(field), field_span)) = self.next() else {
                return Err(ParseError {
                    message: format!("expected a name after `{lower}.`"),
                    span: span.end..span.end + 1,
                });
            };
            let span = span.start..field_span.end;
            let kind = if lower == "param" {
                ExprKind::Param(field)
            } else {
                ExprKind::Partition(field)
            };
            return Ok(Expr { kind, span });
        }
        if self.peek_symbol("(") {
            self.next();
            let mut args = Vec::new();
            if !self.peek_symbol(")") {
                loop {
                    args.push(self.expr(0)?);
                    if self.peek_symbol(",") {
                        self.next();
                    } else {
                        break;
                    }
                }
            }
            let close = self.expect_symbol(")")?;
            let call = Expr {
                kind: ExprKind::Call {
                    name: lower,
                    name_span: span.clone(),
                    args,
                },
                span: span.start..close.end,
            };
            return self.window(call);
        }
        Ok(Expr {
            kind: ExprKind::Column(name),
            span,
        })
    }
}

/// Every column the expression reads, with its span.
pub fn columns(expr: &Expr) -> Vec<(&str, Span)> {
    let mut out = Vec::new();
    visit(expr, &mut |e| {
        if let ExprKind::Column(name) = &e.kind {
            out.push((name.as_str(), e.span.clone()));
        }
    });
    out
}

fn visit<'a>(expr: &'a Expr, f: &mut impl FnMut(&'a Expr)) {
    f(expr);
    match &expr.kind {
        ExprKind::Unary(_, inner) | ExprKind::IsNull { expr: inner, .. } => visit(inner, f),
        ExprKind::Binary(_, left, right) => {
            visit(left, f);
            visit(right, f);
        }
        ExprKind::InList { expr, list, .. } => {
            visit(expr, f);
            list.iter().for_each(|item| visit(item, f));
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|arg| visit(arg, f)),
        ExprKind::Window { call, partition_by } => {
            visit(call, f);
            partition_by.iter().for_each(|column| visit(column, f));
        }
        ExprKind::Column(_)
        | ExprKind::Literal(_)
        | ExprKind::Null
        | ExprKind::Param(_)
        | ExprKind::Partition(_) => {}
    }
}
