//! The parsed form of a FHIRPath expression.

/// A FHIRPath expression tree. Parse once with [`super::parse`], evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    /// `$this`
    This,
    /// `$index`
    IndexVar,
    /// `%resource`, `%context`, `%rootResource`, `%ucum`, ...
    Var(String),
    /// `focus.name` (or a bare `name`, navigating from the current focus; a
    /// bare capitalised name such as `Patient` filters the focus by resource type).
    Member(Option<Box<Expr>>, String),
    /// `focus.f(args)` (or a bare `f(args)` on the current focus).
    Call(Option<Box<Expr>>, Func),
    /// `expr[index]`
    Indexer(Box<Expr>, Box<Expr>),
    /// unary minus
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `expr is T` / `expr as T`
    TypeOp(TypeOp, Box<Expr>, TypeSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Union,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
    Concat,
    And,
    Or,
    Xor,
    Implies,
    In,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeOp {
    Is,
    As,
}

/// A type name, optionally qualified (`FHIR.Patient`, `System.String`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

/// The supported functions, resolved at parse time (unknown names are parse errors).
#[derive(Debug, Clone, PartialEq)]
pub enum Func {
    Where(Box<Expr>),
    Select(Box<Expr>),
    All(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    Not,
    First,
    Last,
    Tail,
    Skip(Box<Expr>),
    Take(Box<Expr>),
    Single,
    Count,
    Distinct,
    HasValue,
    Children,
    Trace,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    /// `resolve()`: a reference resolves to a marker carrying the target type.
    Resolve,
    Extension(Box<Expr>),
    HasExtension(Box<Expr>),
    OfType(TypeSpec),
    As(TypeSpec),
    Is(TypeSpec),
    Iif(Box<Expr>, Box<Expr>, Option<Box<Expr>>),
    StartsWith(Box<Expr>),
    EndsWith(Box<Expr>),
    ContainsStr(Box<Expr>),
    Length,
}

fn type_arg(name: &str, arg: Expr) -> Result<TypeSpec, String> {
    match arg {
        Expr::Member(None, n) => Ok(TypeSpec {
            namespace: None,
            name: n,
        }),
        Expr::Member(Some(ns), n) => match *ns {
            Expr::Member(None, ns) => Ok(TypeSpec {
                namespace: Some(ns),
                name: n,
            }),
            _ => Err(format!("{name}() expects a type name")),
        },
        _ => Err(format!("{name}() expects a type name")),
    }
}

impl Func {
    pub(super) fn resolve(name: &str, args: Vec<Expr>) -> Result<Func, String> {
        let n = args.len();
        let arity = |want: usize| -> Result<(), String> {
            if n == want {
                Ok(())
            } else {
                Err(format!("{name}() takes {want} argument(s), got {n}"))
            }
        };
        let mut it = args.into_iter();
        let mut one = || -> Result<Box<Expr>, String> {
            it.next()
                .map(Box::new)
                .ok_or_else(|| format!("{name}() is missing an argument"))
        };
        Ok(match name {
            "where" => {
                arity(1)?;
                Func::Where(one()?)
            }
            "select" => {
                arity(1)?;
                Func::Select(one()?)
            }
            "all" => {
                arity(1)?;
                Func::All(one()?)
            }
            "exists" => {
                if n > 1 {
                    return Err("exists() takes at most one argument".into());
                }
                Func::Exists(if n == 1 { Some(one()?) } else { None })
            }
            "empty" => {
                arity(0)?;
                Func::Empty
            }
            "not" => {
                arity(0)?;
                Func::Not
            }
            "first" => {
                arity(0)?;
                Func::First
            }
            "last" => {
                arity(0)?;
                Func::Last
            }
            "tail" => {
                arity(0)?;
                Func::Tail
            }
            "skip" => {
                arity(1)?;
                Func::Skip(one()?)
            }
            "take" => {
                arity(1)?;
                Func::Take(one()?)
            }
            "single" => {
                arity(0)?;
                Func::Single
            }
            "count" => {
                arity(0)?;
                Func::Count
            }
            "distinct" => {
                arity(0)?;
                Func::Distinct
            }
            "hasValue" => {
                arity(0)?;
                Func::HasValue
            }
            "children" => {
                arity(0)?;
                Func::Children
            }
            "trace" => Func::Trace,
            "allTrue" => Func::AllTrue,
            "anyTrue" => Func::AnyTrue,
            "allFalse" => Func::AllFalse,
            "anyFalse" => Func::AnyFalse,
            "resolve" => {
                arity(0)?;
                Func::Resolve
            }
            "extension" => {
                arity(1)?;
                Func::Extension(one()?)
            }
            "hasExtension" => {
                arity(1)?;
                Func::HasExtension(one()?)
            }
            "ofType" | "as" | "is" => {
                arity(1)?;
                let ts = type_arg(name, *one()?)?;
                match name {
                    "ofType" => Func::OfType(ts),
                    "as" => Func::As(ts),
                    _ => Func::Is(ts),
                }
            }
            "iif" => {
                if !(2..=3).contains(&n) {
                    return Err("iif() takes 2 or 3 arguments".into());
                }
                let c = one()?;
                let t = one()?;
                let f = if n == 3 { Some(one()?) } else { None };
                Func::Iif(c, t, f)
            }
            "startsWith" => {
                arity(1)?;
                Func::StartsWith(one()?)
            }
            "endsWith" => {
                arity(1)?;
                Func::EndsWith(one()?)
            }
            "contains" => {
                arity(1)?;
                Func::ContainsStr(one()?)
            }
            "length" => {
                arity(0)?;
                Func::Length
            }
            other => return Err(format!("unsupported function {other}()")),
        })
    }
}

impl Expr {
    /// The top-level `|` branches of this expression (itself if it is not a union).
    pub fn union_branches(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        fn walk<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
            if let Expr::Binary(BinOp::Union, l, r) = e {
                walk(l, out);
                walk(r, out);
            } else {
                out.push(e);
            }
        }
        walk(self, &mut out);
        out
    }

    /// The resource type this expression starts from, when its leftmost step is a
    /// capitalised name (`Observation.code` → `Observation`).
    pub fn root_type(&self) -> Option<&str> {
        match self {
            Expr::Member(None, name) => name
                .chars()
                .next()
                .filter(char::is_ascii_uppercase)
                .map(|_| name.as_str()),
            Expr::Member(Some(f), _) | Expr::Call(Some(f), _) | Expr::Indexer(f, _) => {
                f.root_type()
            }
            Expr::TypeOp(_, f, _) => f.root_type(),
            Expr::Binary(op, l, _) if *op != BinOp::Union => l.root_type(),
            _ => None,
        }
    }

    /// The branches of a top-level union that apply to `resource_type` (branches
    /// rooted at another type are dropped), rejoined into one expression.
    /// `None` if no branch applies.
    pub fn for_resource_type(&self, resource_type: &str) -> Option<Expr> {
        let mut kept: Option<Expr> = None;
        for b in self.union_branches() {
            let applies = match b.root_type() {
                None => true,
                Some(t) => t == resource_type || t == "Resource" || t == "DomainResource",
            };
            if applies {
                kept = Some(match kept {
                    None => b.clone(),
                    Some(k) => Expr::Binary(BinOp::Union, Box::new(k), Box::new(b.clone())),
                });
            }
        }
        kept
    }
}
