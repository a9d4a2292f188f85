//! The little of the R4 type model the evaluator needs: which element names are
//! choice types (`value[x]`), which suffixes name a type, and the resource types.
//! Kept in step with `generated/structures.json` by a unit test.

/// Names of every `[x]` element in R4 (any type, any path), sorted.
pub(crate) const CHOICE_NAMES: &[&str] = &[
    "abatement",
    "additive",
    "age",
    "allowed",
    "amount",
    "answer",
    "asNeeded",
    "author",
    "born",
    "bounds",
    "characteristic",
    "chargeItem",
    "code",
    "collected",
    "content",
    "created",
    "date",
    "deceased",
    "defaultValue",
    "definingSubstance",
    "definition",
    "detail",
    "diagnosis",
    "dose",
    "doseNumber",
    "due",
    "effective",
    "entity",
    "event",
    "example",
    "fastingStatus",
    "fixed",
    "identified",
    "indication",
    "item",
    "legallyBinding",
    "location",
    "manufacturer",
    "maxValue",
    "medication",
    "minValue",
    "minimumVolume",
    "module",
    "multipleBirth",
    "name",
    "occurred",
    "occurrence",
    "offset",
    "onset",
    "participantEffective",
    "pattern",
    "performed",
    "probability",
    "procedure",
    "product",
    "quantity",
    "rate",
    "reported",
    "scheduled",
    "seriesDoses",
    "serviced",
    "source",
    "start",
    "statusReason",
    "studyEffective",
    "subject",
    "substance",
    "target",
    "time",
    "timing",
    "topic",
    "used",
    "value",
    "when",
];

/// Type names as they appear capitalised in choice element names (`valueDateTime`), sorted.
pub(crate) const CHOICE_TYPE_SUFFIXES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Date",
    "DateTime",
    "Decimal",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Id",
    "Identifier",
    "Instant",
    "Integer",
    "Markdown",
    "Meta",
    "Money",
    "Oid",
    "ParameterDefinition",
    "Period",
    "PositiveInt",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "String",
    "Time",
    "Timing",
    "TriggerDefinition",
    "UnsignedInt",
    "Uri",
    "Url",
    "UsageContext",
    "Uuid",
];

/// Every concrete R4 resource type, sorted.
pub const RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

pub(crate) fn is_choice_name(name: &str) -> bool {
    CHOICE_NAMES.binary_search(&name).is_ok()
}

pub(crate) fn is_choice_suffix(suffix: &str) -> bool {
    CHOICE_TYPE_SUFFIXES.binary_search(&suffix).is_ok()
}

/// Whether `name` is a concrete R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// Quantity profiles/specialisations that also answer `is Quantity`.
pub(crate) fn is_quantity_kind(t: &str) -> bool {
    matches!(
        t,
        "Quantity" | "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity"
    )
}

/// Split a literal reference into `(type, id)` when it has that shape:
/// `Patient/123`, `Patient/123/_history/2`, or an absolute URL ending in one of
/// those (`https://x/fhir/Patient/123`). The type must be an R4 resource type and
/// the id a valid FHIR id. `#contained`, `urn:uuid:…` and canonicals that do not
/// end in `Type/id` give `None`.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let mut s = reference;
    if let Some(q) = s.find(['?', '#']) {
        s = &s[..q];
    }
    let mut parts = s.rsplit('/');
    let mut last = parts.next()?;
    let mut prev = parts.next()?;
    if prev == "_history" {
        // `…/Type/id/_history/vid`
        let _vid = last;
        last = parts.next()?;
        prev = parts.next()?;
    }
    if is_resource_type(prev) && is_fhir_id(last) {
        Some((prev, last))
    } else {
        None
    }
}

/// A FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn tables_are_sorted() {
        for t in [CHOICE_NAMES, CHOICE_TYPE_SUFFIXES, RESOURCE_TYPES] {
            assert!(t.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn tables_match_structures_json() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../generated/structures.json")).unwrap();
        let types = v["types"].as_object().unwrap();
        let mut names = BTreeSet::new();
        let mut suffixes = BTreeSet::new();
        let mut resources = BTreeSet::new();
        for (tn, t) in types {
            if t["kind"] == "resource" && t["abstract"] != true {
                resources.insert(tn.clone());
            }
            for e in t["elements"].as_array().unwrap() {
                let p = e["p"].as_str().unwrap();
                if let Some(p) = p.strip_suffix("[x]") {
                    names.insert(p.rsplit('.').next().unwrap().to_string());
                    for ty in e["t"].as_array().into_iter().flatten() {
                        let ty = ty.as_str().unwrap();
                        let mut c = ty.chars();
                        let first = c.next().unwrap().to_ascii_uppercase();
                        suffixes.insert(format!("{first}{}", c.as_str()));
                    }
                }
            }
        }
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(names, v(CHOICE_NAMES));
        assert_eq!(suffixes, v(CHOICE_TYPE_SUFFIXES));
        assert_eq!(resources, v(RESOURCE_TYPES));
    }
}
