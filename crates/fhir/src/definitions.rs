//! The official FHIR R4 definitions, embedded in the binary and parsed once.
//!
//! The tables in `generated/` are produced by `scripts/gen_r4_tables.py` from the
//! official package `hl7.fhir.r4.examples@4.0.1`. This module turns
//! `structures.json` and `valuesets.json` into lookup structures; the search
//! parameter and compartment tables are exposed as raw JSON
//! ([`search_parameters_json`], [`compartments_json`]) for the search module to
//! parse itself.
//!
//! # Model
//!
//! - A [`TypeDef`] is one base type: a resource (`Patient`), a complex data type
//!   (`HumanName`) or a primitive (`date`). Profiles are not included.
//! - Each type has its snapshot elements as [`ElementDef`]s, addressed by their
//!   path *relative to the type* (`"contact.name"`, `"value[x]"`).
//! - A [`Scope`] is a place in the element tree whose children you can list: the
//!   root of a type, or an element whose children are defined inline (a
//!   `BackboneElement`, e.g. `Patient.contact`). [`Definitions::descend`] moves
//!   from an element to the scope of its value, following `contentReference`s
//!   (`Questionnaire.item.item` reuses `Questionnaire.item`) and type boundaries
//!   (`Patient.contact.name` is a `HumanName`).
//! - Choice elements (`value[x]`) appear once with several types; their JSON keys
//!   are the stem plus the type name with its first letter upper-cased
//!   (`valueQuantity`, `valueDateTime`). [`Scope::json_key`] resolves a JSON key
//!   to the element and the chosen type.
//!
//! ```
//! use carelayer_fhir::definitions::r4;
//!
//! let defs = r4();
//! assert!(defs.is_resource_type("Observation"));
//! let obs = defs.scope("Observation").unwrap();
//! let (value, ty) = obs.json_key("valueQuantity").unwrap();
//! assert_eq!(value.path(), "value[x]");
//! assert_eq!(ty, "Quantity");
//! let quantity = defs.descend(obs.type_def(), value, ty).unwrap();
//! assert!(quantity.child("unit").is_some());
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;

const STRUCTURES_JSON: &str = include_str!("../generated/structures.json");
const VALUESETS_JSON: &str = include_str!("../generated/valuesets.json");
const SEARCH_PARAMETERS_JSON: &str = include_str!("../generated/search-parameters.json");
const COMPARTMENTS_JSON: &str = include_str!("../generated/compartments.json");

/// The raw `generated/search-parameters.json` table (all official R4
/// SearchParameters, compacted). Parsed by the search module.
pub fn search_parameters_json() -> &'static str {
    SEARCH_PARAMETERS_JSON
}

/// The raw `generated/compartments.json` table (the official R4
/// CompartmentDefinitions, compacted).
pub fn compartments_json() -> &'static str {
    COMPARTMENTS_JSON
}

/// The R4 definitions, parsed on first use and shared for the life of the process.
///
/// Parsing takes a few milliseconds; every later call is a pointer load.
pub fn r4() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(
        || match Definitions::parse(STRUCTURES_JSON, VALUESETS_JSON) {
            Ok(defs) => defs,
            // The tables are embedded at compile time and covered by unit tests, so
            // this only fires on a broken build of the generator's output.
            Err(e) => panic!("embedded R4 tables are corrupt: {e}"),
        },
    )
}

/// What sort of type a [`TypeDef`] is (the StructureDefinition `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// A resource (`Patient`), including the abstract `Resource` and `DomainResource`.
    Resource,
    /// A complex data type (`HumanName`, `BackboneElement`, `Extension`, ...).
    ComplexType,
    /// A primitive data type (`string`, `date`, ...).
    PrimitiveType,
}

/// The R4 primitive types, with how each is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// The JSON representation of a primitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonKind {
    /// `true` / `false`.
    Bool,
    /// A JSON number (integer, positiveInt, unsignedInt, decimal).
    Number,
    /// A JSON string (everything else).
    String,
}

impl Primitive {
    /// The primitive for a FHIR type name (`"dateTime"`), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "base64Binary" => Self::Base64Binary,
            "boolean" => Self::Boolean,
            "canonical" => Self::Canonical,
            "code" => Self::Code,
            "date" => Self::Date,
            "dateTime" => Self::DateTime,
            "decimal" => Self::Decimal,
            "id" => Self::Id,
            "instant" => Self::Instant,
            "integer" => Self::Integer,
            "markdown" => Self::Markdown,
            "oid" => Self::Oid,
            "positiveInt" => Self::PositiveInt,
            "string" => Self::String,
            "time" => Self::Time,
            "unsignedInt" => Self::UnsignedInt,
            "uri" => Self::Uri,
            "url" => Self::Url,
            "uuid" => Self::Uuid,
            "xhtml" => Self::Xhtml,
            _ => return None,
        })
    }

    /// The FHIR type name (`"dateTime"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Base64Binary => "base64Binary",
            Self::Boolean => "boolean",
            Self::Canonical => "canonical",
            Self::Code => "code",
            Self::Date => "date",
            Self::DateTime => "dateTime",
            Self::Decimal => "decimal",
            Self::Id => "id",
            Self::Instant => "instant",
            Self::Integer => "integer",
            Self::Markdown => "markdown",
            Self::Oid => "oid",
            Self::PositiveInt => "positiveInt",
            Self::String => "string",
            Self::Time => "time",
            Self::UnsignedInt => "unsignedInt",
            Self::Uri => "uri",
            Self::Url => "url",
            Self::Uuid => "uuid",
            Self::Xhtml => "xhtml",
        }
    }

    /// How values of this type are written in FHIR JSON.
    pub fn json_kind(self) -> JsonKind {
        match self {
            Self::Boolean => JsonKind::Bool,
            Self::Integer | Self::PositiveInt | Self::UnsignedInt | Self::Decimal => {
                JsonKind::Number
            }
            _ => JsonKind::String,
        }
    }
}

/// The maximum cardinality of an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Max {
    /// At most this many (`"0"`, `"1"`, ...).
    Count(u32),
    /// `"*"`.
    Unbounded,
}

impl Max {
    /// Whether `n` occurrences are allowed by this maximum.
    pub fn allows(self, n: usize) -> bool {
        match self {
            Max::Unbounded => true,
            Max::Count(m) => n <= m as usize,
        }
    }
}

impl fmt::Display for Max {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Max::Count(n) => write!(f, "{n}"),
            Max::Unbounded => f.write_str("*"),
        }
    }
}

/// One element of a type's snapshot.
#[derive(Debug, Clone)]
pub struct ElementDef {
    path: Box<str>,
    name_start: usize,
    min: u32,
    max: Max,
    types: Vec<Box<str>>,
    type_ids: Vec<u32>,
    content_reference: Option<Box<str>>,
    content_reference_id: Option<u32>,
    targets: Vec<Box<str>>,
    binding: Option<Box<str>>,
    summary: bool,
    modifier: bool,
    /// Position in the owning type's element list.
    index: u32,
    /// Index of the parent element in the same type; `None` for top-level elements.
    parent: Option<u32>,
    /// Whether the element itself is a JSON array: the base definition's max is
    /// not `"1"` (or `"0"`). Arrays stay arrays even with one item.
    array: bool,
}

impl ElementDef {
    /// The path relative to the owning type, e.g. `"contact.name"`, `"value[x]"`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last path segment as defined, e.g. `"name"`, `"value[x]"`.
    pub fn name(&self) -> &str {
        &self.path[self.name_start..]
    }

    /// The FHIRPath name: the last segment without `[x]` (`"value"`).
    pub fn fhirpath_name(&self) -> &str {
        let n = self.name();
        n.strip_suffix("[x]").unwrap_or(n)
    }

    /// Minimum cardinality.
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Maximum cardinality.
    pub fn max(&self) -> Max {
        self.max
    }

    /// Whether the element repeats, i.e. is written as a JSON array.
    pub fn is_array(&self) -> bool {
        self.array
    }

    /// Whether this is a choice element (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.path.ends_with("[x]")
    }

    /// The type codes (`["Quantity", "CodeableConcept", ...]`), in definition
    /// order. Empty for a [`content_reference`](Self::content_reference) element.
    pub fn types(&self) -> impl ExactSizeIterator<Item = &str> {
        self.types.iter().map(|t| &**t)
    }

    /// The single type code, when there is exactly one.
    pub fn single_type(&self) -> Option<&str> {
        match self.types.as_slice() {
            [t] => Some(t),
            _ => None,
        }
    }

    /// For an element that reuses another's definition: the referenced path
    /// relative to the same type (`"item"` for `Questionnaire.item.item`).
    pub fn content_reference(&self) -> Option<&str> {
        self.content_reference.as_deref()
    }

    /// Target resource types of a `Reference`/`canonical` element (`["Patient",
    /// "Group"]`); `"Resource"` means any.
    pub fn targets(&self) -> impl ExactSizeIterator<Item = &str> {
        self.targets.iter().map(|t| &**t)
    }

    /// The required ValueSet binding URL (no version), if any.
    pub fn required_binding(&self) -> Option<&str> {
        self.binding.as_deref()
    }

    /// `isSummary` in the base definition (what `_summary=true` keeps).
    pub fn is_summary(&self) -> bool {
        self.summary
    }

    /// `isModifier` in the base definition.
    pub fn is_modifier(&self) -> bool {
        self.modifier
    }

    /// Position in the owning type's [`TypeDef::elements`].
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The JSON property name for this element holding a value of type
    /// `type_code`: the name itself, or for a choice the stem plus the
    /// capitalised type (`value[x]` + `Quantity` → `valueQuantity`). `None` when
    /// `type_code` is not one of the element's types.
    pub fn json_name(&self, type_code: &str) -> Option<String> {
        if !self.types.iter().any(|t| &**t == type_code) {
            return None;
        }
        match self.name().strip_suffix("[x]") {
            Some(stem) => Some(choice_key(stem, type_code)),
            None => Some(self.name().to_owned()),
        }
    }

    /// Every JSON property name this element can appear under (one, or one per
    /// type for a choice), without the `_` primitive-extension variants.
    pub fn json_names(&self) -> Vec<String> {
        match self.name().strip_suffix("[x]") {
            Some(stem) => self.types.iter().map(|t| choice_key(stem, t)).collect(),
            None => vec![self.name().to_owned()],
        }
    }
}

fn choice_key(stem: &str, type_code: &str) -> String {
    let mut key = String::with_capacity(stem.len() + type_code.len());
    key.push_str(stem);
    let mut chars = type_code.chars();
    if let Some(first) = chars.next() {
        key.extend(first.to_uppercase());
        key.push_str(chars.as_str());
    }
    key
}

/// What a JSON key resolves to within a [`Scope`].
#[derive(Debug, Clone, Copy)]
struct JsonKey {
    element: u32,
    /// Index into the element's `types` (0 unless a choice).
    type_index: u8,
}

/// The children of one scope (type root or element) inside a [`TypeDef`].
#[derive(Debug, Default, Clone)]
struct Node {
    children: Vec<u32>,
    keys: HashMap<Box<str>, JsonKey>,
}

/// One base type of R4.
#[derive(Debug, Clone)]
pub struct TypeDef {
    name: Box<str>,
    kind: TypeKind,
    is_abstract: bool,
    base: Option<Box<str>>,
    primitive: Option<Primitive>,
    elements: Vec<ElementDef>,
    by_path: HashMap<Box<str>, u32>,
    /// `nodes[0]` is the type root; `nodes[i + 1]` holds element `i`'s children.
    nodes: Vec<Node>,
    /// Top-level elements flagged `isSummary`.
    summary: Vec<u32>,
}

impl TypeDef {
    /// The type name (`"Patient"`, `"HumanName"`, `"dateTime"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resource, complex type or primitive.
    pub fn kind(&self) -> TypeKind {
        self.kind
    }

    /// Whether the type is abstract (`Resource`, `DomainResource`, `Element`,
    /// `BackboneElement`).
    pub fn is_abstract(&self) -> bool {
        self.is_abstract
    }

    /// The base type name (`"DomainResource"` for `Patient`); `None` for roots.
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// For a primitive type, which one.
    pub fn primitive(&self) -> Option<Primitive> {
        self.primitive
    }

    /// All snapshot elements, in snapshot order (the root element excluded).
    pub fn elements(&self) -> &[ElementDef] {
        &self.elements
    }

    /// The element at `path` relative to this type (`"contact.name"`), exactly
    /// as in the snapshot (choices keep `[x]`).
    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        self.by_path.get(path).map(|&i| &self.elements[i as usize])
    }

    /// The scope of this type's top-level elements.
    pub fn root(&self) -> Scope<'_> {
        Scope {
            type_def: self,
            element: None,
        }
    }

    /// Top-level elements flagged `isSummary`, in snapshot order.
    pub fn summary_elements(&self) -> impl Iterator<Item = &ElementDef> {
        self.summary.iter().map(|&i| &self.elements[i as usize])
    }

    /// The parent element of `element` in this type (`None` at top level).
    pub fn parent(&self, element: &ElementDef) -> Option<&ElementDef> {
        element.parent.map(|i| &self.elements[i as usize])
    }

    fn node(&self, element: Option<&ElementDef>) -> &Node {
        let i = element.map_or(0, |e| e.index as usize + 1);
        &self.nodes[i]
    }
}

/// A place in a type's element tree whose children can be listed: a type's
/// root, or an element with inline children (BackboneElement / Element).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    type_def: &'a TypeDef,
    element: Option<&'a ElementDef>,
}

impl<'a> Scope<'a> {
    /// The type whose elements this scope lists.
    pub fn type_def(&self) -> &'a TypeDef {
        self.type_def
    }

    /// The element whose children this scope lists (`None` at a type root).
    pub fn element(&self) -> Option<&'a ElementDef> {
        self.element
    }

    /// The path of this scope relative to its type (`""` at the root).
    pub fn path(&self) -> &'a str {
        self.element.map_or("", |e| e.path())
    }

    /// The child elements, in snapshot order.
    pub fn children(&self) -> impl Iterator<Item = &'a ElementDef> + use<'a> {
        let td = self.type_def;
        td.node(self.element)
            .children
            .iter()
            .map(move |&i| &td.elements[i as usize])
    }

    /// A child by its defined name (`"value[x]"`) or FHIRPath name (`"value"`).
    pub fn child(&self, name: &str) -> Option<&'a ElementDef> {
        self.children()
            .find(|e| e.name() == name || e.fhirpath_name() == name)
    }

    /// Resolves a JSON property name (without a leading `_`) to the child element
    /// and the chosen type code: `"valueQuantity"` → (`value[x]`, `"Quantity"`);
    /// `"status"` → (`status`, `"code"`). `None` for unknown keys. Elements
    /// defined by `contentReference` give `"BackboneElement"` as the type.
    pub fn json_key(&self, key: &str) -> Option<(&'a ElementDef, &'a str)> {
        let td = self.type_def;
        let k = td.node(self.element).keys.get(key)?;
        let e = &td.elements[k.element as usize];
        let ty = e
            .types
            .get(k.type_index as usize)
            .map_or("BackboneElement", |t| &**t);
        Some((e, ty))
    }

    /// Like [`json_key`](Self::json_key), returning the type's index in
    /// [`ElementDef::types`] (for callers keeping per-variant state).
    pub(crate) fn json_key_index(&self, key: &str) -> Option<(&'a ElementDef, usize)> {
        let td = self.type_def;
        let k = td.node(self.element).keys.get(key)?;
        Some((&td.elements[k.element as usize], k.type_index as usize))
    }
}

/// A required-binding ValueSet expansion: codes per code system.
#[derive(Debug, Clone)]
pub struct ValueSet {
    url: Box<str>,
    systems: Vec<(Box<str>, HashSet<Box<str>>)>,
}

impl ValueSet {
    /// The ValueSet canonical URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The code systems in the expansion.
    pub fn systems(&self) -> impl Iterator<Item = &str> {
        self.systems.iter().map(|(s, _)| &**s)
    }

    /// Every `(system, code)` of the expansion.
    pub fn codes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.systems
            .iter()
            .flat_map(|(s, codes)| codes.iter().map(move |c| (&**s, &**c)))
    }

    /// Whether the expansion includes anything from `system`.
    pub fn has_system(&self, system: &str) -> bool {
        self.systems.iter().any(|(s, _)| &**s == system)
    }

    /// Whether `code` is in the expansion: in `system` when given, in any system
    /// otherwise (how a bare `code` element is checked).
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        self.systems
            .iter()
            .filter(|(s, _)| system.is_none_or(|sys| &**s == sys))
            .any(|(_, codes)| codes.contains(code))
    }
}

/// Every R4 base type and required-binding expansion, indexed for lookup.
#[derive(Debug)]
pub struct Definitions {
    types: Vec<TypeDef>,
    by_name: HashMap<Box<str>, u32>,
    /// Indices into `types` of the concrete resource types, sorted by name.
    resource_types: Vec<u32>,
    valuesets: HashMap<Box<str>, ValueSet>,
    primitive_regex: HashMap<Box<str>, Regex>,
}

/// An error in the embedded tables (only possible with a broken generator).
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// The JSON did not have the expected shape.
    #[error("malformed table: {0}")]
    Json(#[from] serde_json::Error),
    /// A table is internally inconsistent.
    #[error("{0}")]
    Inconsistent(String),
    /// A primitive regex did not compile.
    #[error("regex for {0}: {1}")]
    Regex(String, regex::Error),
}

#[derive(Deserialize)]
struct RawStructures {
    types: HashMap<String, RawType>,
    primitive_regex: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawType {
    kind: String,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    base: Option<String>,
    elements: Vec<RawElement>,
}

#[derive(Deserialize)]
struct RawElement {
    p: String,
    min: u32,
    max: String,
    #[serde(default)]
    t: Vec<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    vs: Option<String>,
    #[serde(default)]
    sum: u8,
    #[serde(default, rename = "mod")]
    modifier: u8,
}

impl Definitions {
    /// Parses the two tables (normally the embedded ones, via [`r4`]).
    pub fn parse(structures_json: &str, valuesets_json: &str) -> Result<Self, DefinitionsError> {
        let raw: RawStructures = serde_json::from_str(structures_json)?;
        let raw_vs: HashMap<String, HashMap<String, Vec<String>>> =
            serde_json::from_str(valuesets_json)?;

        let mut names: Vec<&String> = raw.types.keys().collect();
        names.sort();
        let by_name: HashMap<Box<str>, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (Box::<str>::from(n.as_str()), i as u32))
            .collect();

        let mut types = Vec::with_capacity(names.len());
        for name in &names {
            let rt = &raw.types[*name];
            types.push(build_type(name, rt, &by_name)?);
        }

        let resource_types: Vec<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|(i, _)| i as u32)
            .collect();

        let mut valuesets = HashMap::with_capacity(raw_vs.len());
        for (url, systems) in raw_vs {
            let mut sys: Vec<(Box<str>, HashSet<Box<str>>)> = systems
                .into_iter()
                .map(|(s, codes)| (s.into(), codes.into_iter().map(Into::into).collect()))
                .collect();
            sys.sort_by(|a, b| a.0.cmp(&b.0));
            valuesets.insert(
                url.clone().into(),
                ValueSet {
                    url: url.into(),
                    systems: sys,
                },
            );
        }

        let mut primitive_regex = HashMap::new();
        for (name, pattern) in &raw.primitive_regex {
            let re = Regex::new(&anchor_java_regex(pattern))
                .map_err(|e| DefinitionsError::Regex(name.clone(), e))?;
            primitive_regex.insert(Box::<str>::from(name.as_str()), re);
        }

        Ok(Definitions {
            types,
            by_name,
            resource_types,
            valuesets,
            primitive_regex,
        })
    }

    /// Whether `name` is a concrete (non-abstract) resource type, i.e. a valid
    /// `resourceType` for a stored resource. `"Resource"` and `"DomainResource"`
    /// are not.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.type_def(name)
            .is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// The concrete resource types, sorted by name (146 in R4). Borrowed from
    /// `self`, so `&'static str` when called on [`r4()`]:
    /// `r4().resource_types().collect::<Vec<&'static str>>()`.
    pub fn resource_types(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        self.resource_types
            .iter()
            .map(|&i| &*self.types[i as usize].name)
    }

    /// A type by name: resources, complex and primitive types, abstract ones included.
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.by_name.get(name).map(|&i| &self.types[i as usize])
    }

    /// All types, sorted by name.
    pub fn types(&self) -> &[TypeDef] {
        &self.types
    }

    /// The root scope of a type.
    pub fn scope(&self, type_name: &str) -> Option<Scope<'_>> {
        self.type_def(type_name).map(TypeDef::root)
    }

    /// The element at `path` (snapshot path relative to the type, e.g.
    /// `element("Patient", "contact.name")`, `element("Observation", "value[x]")`).
    pub fn element(&self, type_name: &str, path: &str) -> Option<&ElementDef> {
        self.type_def(type_name)?.element(path)
    }

    /// Resolves a dotted FHIRPath-style path that may cross type boundaries and
    /// name choice variants: `("Patient", "contact.name.family")`,
    /// `("Observation", "value")`, `("Observation", "valueQuantity.unit")`.
    /// Returns the owning type and element. When a step crosses into an element
    /// with several types (a bare choice name) the walk continues only if it ends
    /// there.
    pub fn resolve_path(&self, type_name: &str, path: &str) -> Option<(&TypeDef, &ElementDef)> {
        let mut scope = self.scope(type_name)?;
        let mut segments = path.split('.').peekable();
        loop {
            let seg = segments.next()?;
            let (elem, ty) = match scope.child(seg) {
                Some(e) => (e, e.single_type()),
                None => {
                    let (e, ty) = scope.json_key(seg)?;
                    (e, Some(ty))
                }
            };
            if segments.peek().is_none() {
                return Some((scope.type_def(), elem));
            }
            let ty = match (ty, elem.content_reference()) {
                (_, Some(_)) => "BackboneElement",
                (Some(t), None) => t,
                (None, None) => return None,
            };
            scope = self.descend(scope.type_def(), elem, ty)?;
        }
    }

    /// The scope holding the children of a value of `element` (owned by
    /// `owner`) with type `type_code`: the referenced element for a
    /// `contentReference`, the element itself when its children are inline, or
    /// else the root of the type `type_code`. `None` if the type is unknown.
    pub fn descend<'a>(
        &'a self,
        owner: &'a TypeDef,
        element: &'a ElementDef,
        type_code: &str,
    ) -> Option<Scope<'a>> {
        if let Some(target) = element.content_reference_id {
            return Some(Scope {
                type_def: owner,
                element: Some(&owner.elements[target as usize]),
            });
        }
        if !owner.node(Some(element)).children.is_empty() {
            return Some(Scope {
                type_def: owner,
                element: Some(element),
            });
        }
        self.scope(type_code)
    }

    /// Internal fast path for [`descend`](Self::descend) by type index.
    pub(crate) fn descend_index<'a>(
        &'a self,
        owner: &'a TypeDef,
        element: &'a ElementDef,
        type_index: usize,
    ) -> Option<Scope<'a>> {
        if let Some(target) = element.content_reference_id {
            return Some(Scope {
                type_def: owner,
                element: Some(&owner.elements[target as usize]),
            });
        }
        if !owner.node(Some(element)).children.is_empty() {
            return Some(Scope {
                type_def: owner,
                element: Some(element),
            });
        }
        let id = *element.type_ids.get(type_index)?;
        Some(self.types[id as usize].root())
    }

    /// The type definition of the `type_index`-th type of `element`.
    pub(crate) fn element_type(&self, element: &ElementDef, type_index: usize) -> Option<&TypeDef> {
        element
            .type_ids
            .get(type_index)
            .map(|&i| &self.types[i as usize])
    }

    /// Top-level elements of `type_name` flagged `isSummary` (empty for unknown
    /// types). For `_summary=true`, keep these plus `resourceType`; a choice
    /// element covers all of its [`ElementDef::json_names`].
    pub fn summary_elements(&self, type_name: &str) -> Vec<&ElementDef> {
        self.type_def(type_name)
            .map(|t| t.summary_elements().collect())
            .unwrap_or_default()
    }

    /// Whether `name` is a primitive type (`"string"`, `"dateTime"`, ...).
    pub fn is_primitive(&self, name: &str) -> bool {
        self.type_def(name)
            .is_some_and(|t| t.kind == TypeKind::PrimitiveType)
    }

    /// The expansion of a required-binding ValueSet, when it could be enumerated
    /// from the package (220 of them; not e.g. BCP-47 languages or MIME types).
    pub fn value_set(&self, url: &str) -> Option<&ValueSet> {
        self.valuesets.get(url)
    }

    /// The official regex of a primitive type, compiled once and anchored (it
    /// must match the whole value). Java's ASCII `\s`/`\S` semantics are kept.
    pub fn primitive_regex(&self, type_name: &str) -> Option<&Regex> {
        self.primitive_regex.get(type_name)
    }
}

/// Anchors a StructureDefinition regex and gives `\s`/`\S` their Java (ASCII)
/// meaning: Rust's are Unicode-aware, which would reject e.g. a no-break space
/// inside a `string`.
fn anchor_java_regex(pattern: &str) -> String {
    const WS: &str = r" \t\n\x0B\x0C\r";
    let body = pattern
        .replace(r"\s", &format!("[{WS}]"))
        .replace(r"\S", &format!("[^{WS}]"));
    format!("^(?:{body})$")
}

fn build_type(
    name: &str,
    rt: &RawType,
    by_name: &HashMap<Box<str>, u32>,
) -> Result<TypeDef, DefinitionsError> {
    let kind = match rt.kind.as_str() {
        "resource" => TypeKind::Resource,
        "complex-type" => TypeKind::ComplexType,
        "primitive-type" => TypeKind::PrimitiveType,
        other => {
            return Err(DefinitionsError::Inconsistent(format!(
                "{name}: unknown kind {other}"
            )));
        }
    };
    let mut by_path: HashMap<Box<str>, u32> = HashMap::with_capacity(rt.elements.len());
    let mut elements: Vec<ElementDef> = Vec::with_capacity(rt.elements.len());
    for (i, re) in rt.elements.iter().enumerate() {
        let max = if re.max == "*" {
            Max::Unbounded
        } else {
            Max::Count(re.max.parse().map_err(|_| {
                DefinitionsError::Inconsistent(format!("{name}.{}: bad max {}", re.p, re.max))
            })?)
        };
        let parent = match re.p.rfind('.') {
            Some(dot) => Some(*by_path.get(&re.p[..dot]).ok_or_else(|| {
                DefinitionsError::Inconsistent(format!("{name}.{}: parent not defined first", re.p))
            })?),
            None => None,
        };
        let mut type_ids = Vec::with_capacity(re.t.len());
        for t in &re.t {
            type_ids.push(*by_name.get(t.as_str()).ok_or_else(|| {
                DefinitionsError::Inconsistent(format!("{name}.{}: unknown type {t}", re.p))
            })?);
        }
        if re.t.is_empty() && re.reference.is_none() {
            return Err(DefinitionsError::Inconsistent(format!(
                "{name}.{}: neither type nor contentReference",
                re.p
            )));
        }
        if re.t.len() > u8::MAX as usize {
            return Err(DefinitionsError::Inconsistent(format!(
                "{name}.{}: too many types",
                re.p
            )));
        }
        by_path.insert(re.p.as_str().into(), i as u32);
        elements.push(ElementDef {
            path: re.p.as_str().into(),
            name_start: re.p.rfind('.').map_or(0, |d| d + 1),
            min: re.min,
            array: !matches!(max, Max::Count(0 | 1)),
            max,
            types: re.t.iter().map(|t| t.as_str().into()).collect(),
            type_ids,
            content_reference: re.reference.as_deref().map(Into::into),
            content_reference_id: None,
            targets: re.targets.iter().map(|t| t.as_str().into()).collect(),
            binding: re.vs.as_deref().map(Into::into),
            summary: re.sum != 0,
            modifier: re.modifier != 0,
            index: i as u32,
            parent,
        });
    }
    for e in &mut elements {
        if let Some(r) = &e.content_reference {
            e.content_reference_id = Some(*by_path.get(&**r).ok_or_else(|| {
                DefinitionsError::Inconsistent(format!(
                    "{name}.{}: bad contentReference {r}",
                    e.path
                ))
            })?);
        }
    }
    let mut nodes: Vec<Node> = vec![Node::default(); elements.len() + 1];
    for e in &elements {
        let node = &mut nodes[e.parent.map_or(0, |p| p as usize + 1)];
        node.children.push(e.index);
        match e.name().strip_suffix("[x]") {
            Some(stem) => {
                for (ti, t) in e.types.iter().enumerate() {
                    node.keys.insert(
                        choice_key(stem, t).into(),
                        JsonKey {
                            element: e.index,
                            type_index: ti as u8,
                        },
                    );
                }
            }
            None => {
                node.keys.insert(
                    e.name().into(),
                    JsonKey {
                        element: e.index,
                        type_index: 0,
                    },
                );
            }
        }
    }
    let summary = elements
        .iter()
        .filter(|e| e.parent.is_none() && e.summary)
        .map(|e| e.index)
        .collect();
    Ok(TypeDef {
        name: name.into(),
        kind,
        is_abstract: rt.is_abstract,
        base: rt.base.as_deref().map(Into::into),
        primitive: if kind == TypeKind::PrimitiveType {
            Primitive::from_name(name)
        } else {
            None
        },
        elements,
        by_path,
        nodes,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_tables_parse() {
        let d = r4();
        assert_eq!(d.resource_types().len(), 146);
        let all: Vec<&'static str> = r4().resource_types().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(all.iter().all(|t| d.is_resource_type(t)));
        assert!(d.is_resource_type("Patient"));
        assert!(!d.is_resource_type("Resource"));
        assert!(!d.is_resource_type("DomainResource"));
        assert!(!d.is_resource_type("HumanName"));
        assert!(d.is_primitive("dateTime"));
        assert!(!d.is_primitive("Quantity"));
        for t in d.types() {
            if t.kind() == TypeKind::PrimitiveType {
                assert!(t.primitive().is_some(), "{}", t.name());
            }
        }
    }

    #[test]
    fn elements_and_scopes() {
        let d = r4();
        let e = d.element("Patient", "contact.name").unwrap();
        assert_eq!(e.name(), "name");
        assert_eq!(e.single_type(), Some("HumanName"));
        assert!(!e.is_array());
        assert!(d.element("Patient", "name").unwrap().is_array());
        let pat = d.scope("Patient").unwrap();
        let (contact, ty) = pat.json_key("contact").unwrap();
        assert_eq!(ty, "BackboneElement");
        let cs = d.descend(pat.type_def(), contact, ty).unwrap();
        assert_eq!(cs.path(), "contact");
        assert!(cs.child("relationship").is_some());
        let (_, multi) = pat.json_key("multipleBirthInteger").unwrap();
        assert_eq!(multi, "integer");
        assert!(pat.json_key("multipleBirthQuantity").is_none());
        assert!(pat.json_key("_birthDate").is_none());
    }

    #[test]
    fn content_reference_is_followed() {
        let d = r4();
        let q = d.type_def("Questionnaire").unwrap();
        let item_item = q.element("item.item").unwrap();
        assert_eq!(item_item.content_reference(), Some("item"));
        let s = d.descend(q, item_item, "BackboneElement").unwrap();
        assert_eq!(s.path(), "item");
        assert!(s.child("linkId").is_some());
        let (_, e) = d
            .resolve_path("Questionnaire", "item.item.item.linkId")
            .unwrap();
        assert_eq!(e.path(), "item.linkId");
    }

    #[test]
    fn resolve_path_crosses_types_and_choices() {
        let d = r4();
        let (t, e) = d.resolve_path("Patient", "contact.name.family").unwrap();
        assert_eq!((t.name(), e.path()), ("HumanName", "family"));
        let (t, e) = d.resolve_path("Observation", "value").unwrap();
        assert_eq!((t.name(), e.path()), ("Observation", "value[x]"));
        let (t, e) = d.resolve_path("Observation", "valueQuantity.unit").unwrap();
        assert_eq!((t.name(), e.path()), ("Quantity", "unit"));
        assert!(d.resolve_path("Observation", "value.unit").is_none());
        assert!(d.resolve_path("Observation", "nope").is_none());
    }

    #[test]
    fn json_names_of_choice() {
        let e = r4().element("Observation", "effective[x]").unwrap();
        assert_eq!(
            e.json_name("dateTime").as_deref(),
            Some("effectiveDateTime")
        );
        assert_eq!(e.json_name("Quantity"), None);
        assert!(e.json_names().contains(&"effectivePeriod".to_owned()));
    }

    #[test]
    fn summary_elements_of_patient() {
        let names: Vec<&str> = r4()
            .summary_elements("Patient")
            .iter()
            .map(|e| e.name())
            .collect();
        assert!(names.contains(&"identifier"));
        assert!(names.contains(&"birthDate"));
        assert!(!names.contains(&"photo"));
        assert!(!names.contains(&"contact"));
    }

    #[test]
    fn value_sets_and_regexes() {
        let d = r4();
        let vs = d
            .value_set("http://hl7.org/fhir/ValueSet/administrative-gender")
            .unwrap();
        assert!(vs.contains(None, "female"));
        assert!(vs.contains(Some("http://hl7.org/fhir/administrative-gender"), "other"));
        assert!(!vs.contains(None, "F"));
        let date = d.primitive_regex("date").unwrap();
        assert!(date.is_match("2024-02-29"));
        assert!(!date.is_match("2024-2-29"));
        assert!(!date.is_match("x2024"));
        // Java semantics: a no-break space is not whitespace, so it is allowed.
        assert!(d.primitive_regex("string").unwrap().is_match("a\u{a0}b"));
        assert!(!d.primitive_regex("code").unwrap().is_match("a  b"));
    }
}
