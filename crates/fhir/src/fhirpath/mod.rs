//! The FHIRPath subset the official R4 search expressions use, over FHIR JSON.
//!
//! Parse once into an [`Expr`] with [`parse`], evaluate many times with
//! [`evaluate`]. Supported:
//!
//! - navigation, including choice elements (`Observation.value` finds
//!   `valueQuantity`, `valueString`, … and remembers the type), arrays flatten;
//!   a leading capitalised name (`Patient.name`) filters by resource type;
//! - literals (`'string'`, numbers, `true`/`false`, `{}`), `%resource`/`%context`/
//!   `%rootResource`, `%ucum`/`%sct`/`%loinc`, `$this`, `$index`, indexers `[n]`;
//! - operators `|` `=` `!=` `~` `!~` `<` `<=` `>` `>=` `and` `or` `xor` `implies`
//!   `in` `contains` `is` `as` and numeric `+ - * / div mod`;
//! - functions `where select all exists empty not first last tail skip take single
//!   count distinct hasValue children trace allTrue anyTrue allFalse anyFalse
//!   iif startsWith endsWith contains length`, `is()`/`as()`/`ofType()`,
//!   `extension(url)`, `hasExtension(url)`, and `resolve()` — which does not
//!   fetch anything: `#id` finds the contained resource, any other literal
//!   reference yields a marker carrying the target type read from the reference
//!   text (`Patient/123` → `resolve() is Patient`).
//!
//! Not supported (parse errors): date/time literals, quantity literals, string
//! functions beyond those listed, `&` is parsed but yields empty. Evaluation never
//! fails: type mismatches give empty results, as FHIRPath's propagation of empty does.

mod ast;
mod eval;
mod model;
mod parser;

use serde_json::Value;

pub use ast::{BinOp, Expr, Func, Literal, TypeOp, TypeSpec};
pub use eval::Item;
pub(crate) use eval::guess_complex;
pub use model::{RESOURCE_TYPES, is_fhir_id, is_resource_type, split_reference};
pub(crate) use model::{is_choice_suffix, is_quantity_kind};

/// Why an expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath parse error at {position}: {message}")]
pub struct ParseError {
    /// Byte offset in the expression.
    pub position: usize,
    pub message: String,
}

/// Parse a FHIRPath expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    parser::parse(src)
}

/// Evaluate `expr` with `resource` as the focus (and `%resource`).
pub fn evaluate<'a>(expr: &'a Expr, resource: &'a Value) -> Vec<Item<'a>> {
    evaluate_on(expr, &[Item::node(resource)], resource)
}

/// Evaluate `expr` with `focus` as the input collection; `%resource` is `resource`.
pub fn evaluate_on<'a>(expr: &'a Expr, focus: &[Item<'a>], resource: &'a Value) -> Vec<Item<'a>> {
    let env = eval::Env {
        resource,
        this: None,
        index: 0,
    };
    eval::eval(expr, focus, &env)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "active": true,
            "name": [
                {"family": "Chalmers", "given": ["Peter", "James"], "use": "official"},
                {"family": "Windsor", "use": "maiden"}
            ],
            "telecom": [
                {"system": "phone", "value": "0113 496 0000"},
                {"system": "email", "value": "p@example.org"}
            ],
            "deceasedBoolean": false,
            "generalPractitioner": [{"reference": "Practitioner/gp1"}],
            "managingOrganization": {"reference": "#org"},
            "contained": [{"resourceType": "Organization", "id": "org", "name": "Contained"}],
            "extension": [
                {"url": "http://x/ext", "valueString": "hello"},
                {"url": "http://x/other", "valueCodeableConcept": {"text": "t"}}
            ]
        })
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 185, "unit": "lbs"},
            "component": [
                {"code": {"text": "a"}, "valueQuantity": {"value": 1}},
                {"code": {"text": "b"}, "valueString": "x"}
            ]
        })
    }

    /// Evaluate and render each item compactly.
    fn run(expr: &str, res: &Value) -> Vec<String> {
        let e = parse(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
        evaluate(&e, res)
            .iter()
            .map(|it| match it {
                Item::Node { value, .. } => value.to_string(),
                Item::Bool(b) => b.to_string(),
                Item::Str(s) => format!("'{s}'"),
                Item::Num(n) => n.to_string(),
                Item::Resolved { target_type, .. } => format!("->{target_type}"),
            })
            .collect()
    }

    #[test]
    fn evaluator_table() {
        let p = patient();
        let o = observation();
        let cases: &[(&str, &Value, &[&str])] = &[
            ("Patient.id", &p, &["\"p1\""]),
            ("Observation.id", &p, &[]),
            ("Resource.id", &p, &["\"p1\""]),
            ("id", &p, &["\"p1\""]),
            ("Patient.name.family", &p, &["\"Chalmers\"", "\"Windsor\""]),
            ("Patient.name.given", &p, &["\"Peter\"", "\"James\""]),
            ("Patient.name[1].family", &p, &["\"Windsor\""]),
            ("Patient.name.first().given.last()", &p, &["\"James\""]),
            (
                "Patient.name.where(use='maiden').family",
                &p,
                &["\"Windsor\""],
            ),
            (
                "Patient.name.where(use!='maiden').family",
                &p,
                &["\"Chalmers\""],
            ),
            (
                "Patient.telecom.where(system='email').value",
                &p,
                &["\"p@example.org\""],
            ),
            ("Patient.name.count()", &p, &["2"]),
            ("Patient.name.exists()", &p, &["true"]),
            ("Patient.photo.exists()", &p, &["false"]),
            ("Patient.photo.empty()", &p, &["true"]),
            ("Patient.name.exists(family = 'Windsor')", &p, &["true"]),
            ("Patient.active.not()", &p, &["false"]),
            ("Patient.deceased", &p, &["false"]),
            (
                "Patient.deceased.exists() and Patient.deceased != false",
                &p,
                &["false"],
            ),
            ("Patient.multipleBirth.exists() and true", &p, &["false"]),
            ("Patient.photo.exists() or Patient.active", &p, &["true"]),
            ("Patient.gender = 'male'", &p, &[]),
            (
                "Patient.name.family | Patient.name.family",
                &p,
                &["\"Chalmers\"", "\"Windsor\""],
            ),
            (
                "Patient.generalPractitioner.resolve() is Practitioner",
                &p,
                &["true"],
            ),
            (
                "Patient.generalPractitioner.where(resolve() is Patient)",
                &p,
                &[],
            ),
            (
                "Patient.generalPractitioner.resolve()",
                &p,
                &["->Practitioner"],
            ),
            (
                "Patient.managingOrganization.resolve().name",
                &p,
                &["\"Contained\""],
            ),
            (
                "Patient.extension('http://x/ext').value",
                &p,
                &["\"hello\""],
            ),
            (
                "Patient.extension('http://x/ext').value.ofType(string)",
                &p,
                &["\"hello\""],
            ),
            (
                "Patient.extension('http://x/other').value.as(CodeableConcept).text",
                &p,
                &["\"t\""],
            ),
            ("Patient.hasExtension('http://x/ext')", &p, &["true"]),
            ("Patient.hasExtension('http://x/none')", &p, &["false"]),
            (
                "Patient.where(hasExtension('http://x/ext')).id",
                &p,
                &["\"p1\""],
            ),
            ("Patient.id.hasValue()", &p, &["true"]),
            ("Patient.name.hasValue()", &p, &["false"]),
            ("%resource.id", &p, &["\"p1\""]),
            (
                "Patient.name.select(family)",
                &p,
                &["\"Chalmers\"", "\"Windsor\""],
            ),
            (
                "Patient.name.given.where($this = 'James')",
                &p,
                &["\"James\""],
            ),
            ("iif(Patient.active, 'y', 'n')", &p, &["'y'"]),
            ("Patient.id.startsWith('p')", &p, &["true"]),
            ("1 + 2 * 3", &p, &["7"]),
            ("-(2) < 1", &p, &["true"]),
            ("'a' in ('a' | 'b')", &p, &["true"]),
            ("Patient is Patient", &p, &["true"]),
            ("Patient.active is boolean", &p, &["true"]),
            ("(Observation.value as Quantity).value", &o, &["185"]),
            ("Observation.value.as(Quantity).unit", &o, &["\"lbs\""]),
            ("Observation.value.ofType(Quantity).unit", &o, &["\"lbs\""]),
            ("(Observation.value as string)", &o, &[]),
            ("Observation.value is Quantity", &o, &["true"]),
            (
                "(Observation.component.value as Quantity).value",
                &o,
                &["1"],
            ),
            ("Observation.component.value.as(String)", &o, &["\"x\""]),
            (
                "Observation.component.where(code.text = 'b').value",
                &o,
                &["\"x\""],
            ),
            (
                "Observation.subject.where(resolve() is Patient).reference",
                &o,
                &["\"Patient/p1\""],
            ),
            (
                "Observation.code.coding.code | Patient.id",
                &o,
                &["\"29463-7\""],
            ),
            (
                "Observation.code.coding[0].system = 'http://loinc.org'",
                &o,
                &["true"],
            ),
            ("Observation.component.skip(1).code.text", &o, &["\"b\""]),
            ("Observation.component.take(1).code.text", &o, &["\"a\""]),
            ("Observation.component.code.text ~ 'A'", &o, &["false"]),
            ("Observation.status ~ 'FINAL'", &o, &["true"]),
            ("{}.exists()", &o, &["false"]),
        ];
        for (expr, res, want) in cases {
            assert_eq!(&run(expr, res), want, "{expr}");
        }
    }

    #[test]
    fn choice_navigation_does_not_match_other_elements() {
        // `status` is not a choice element; `statusReason` must not be found by it.
        let v = json!({"resourceType": "Immunization", "statusReason": {"text": "x"}});
        assert!(run("Immunization.status", &v).is_empty());
        // `value` is a choice, but `valueSet` is not one of its types.
        let v = json!({"resourceType": "X", "valueSet": "http://vs"});
        assert!(run("value", &v).is_empty());
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "Patient.name.",
            "Patient.name.frobnicate()",
            "where(",
            "'unterminated",
            "Patient.birthDate > @2020",
            "a b",
            "as(1)",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&deep).is_err());
        let long_chain = format!("a{}", ".where(b".repeat(5_000));
        for bad in [long_chain.as_str(), "-".repeat(10_000).as_str()] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn root_types_and_branches() {
        let e =
            parse("AllergyIntolerance.code | (Condition.code as CodeableConcept) | name").unwrap();
        let roots: Vec<_> = e.union_branches().iter().map(|b| b.root_type()).collect();
        assert_eq!(
            roots,
            vec![Some("AllergyIntolerance"), Some("Condition"), None]
        );
        let c = e.for_resource_type("Condition").unwrap();
        assert_eq!(c.union_branches().len(), 2);
        assert!(
            parse("Patient.x")
                .unwrap()
                .for_resource_type("Observation")
                .is_none()
        );
    }

    #[test]
    fn references_split() {
        assert_eq!(split_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            split_reference("Patient/123/_history/2"),
            Some(("Patient", "123"))
        );
        assert_eq!(
            split_reference("https://fhir.example.org/r4/Observation/a.b-c/_history/7"),
            Some(("Observation", "a.b-c"))
        );
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(
            split_reference("urn:uuid:3b1f1c52-2f24-4b9b-8c2a-3d1f0b7a2d11"),
            None
        );
        assert_eq!(split_reference("Patient"), None);
        assert_eq!(split_reference("Unknown/1"), None);
        assert_eq!(
            split_reference("http://hl7.org/fhir/ValueSet/x|4.0.1"),
            None
        );
    }
}
