#!/usr/bin/env python3
"""Write the demo record set loaded by `carelayer serve --demo`.

    python3 scripts/gen_demo_bundle.py > crates/cli/demo/demo-bundle.json

A transaction Bundle of PUTs with fixed ids (so loading twice is harmless):
two GP practices with ODS-style codes, their GPs, and five patients with
valid NHS numbers from the 999 test range, each with encounters, conditions
(SNOMED CT), observations (LOINC, UCUM), medication requests (dm+d) and
allergies. Fictional people; no real data.
"""
import json


def nhs_number(stem9):
    total = sum(int(d) * (10 - i) for i, d in enumerate(stem9))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10:
        return None
    return stem9 + str(check)


def numbers():
    n = 9990001230
    while True:
        stem = str(n)[:9]
        num = nhs_number(stem)
        if num:
            yield num
        n += 10


PRACTICES = [
    ("Y90001", "Riverside Medical Practice", "LS1 4AP", "Leeds"),
    ("Y90002", "Castle Street Surgery", "YO1 9RN", "York"),
]
GPS = [
    ("G9000011", "Okafor", "Amara", 0),
    ("G9000022", "Hughes", "Daniel", 1),
]
PATIENTS = [
    ("Sarah", "Whitfield", "female", "1968-04-12", "14 Aire Street", "Leeds", "LS1 4PR", 0),
    ("Mohammed", "Rahman", "male", "1954-09-30", "3 Clarence Road", "Leeds", "LS10 1ND", 0),
    ("Emily", "Clarke", "female", "1991-01-22", "27 Bootham", "York", "YO30 7BT", 1),
    ("George", "Patel", "male", "1979-07-05", "8 Micklegate", "York", "YO1 6JX", 1),
    ("Aisling", "O'Neill", "female", "2003-11-18", "52 Kirkstall Lane", "Leeds", "LS5 3BD", 0),
]
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("35489007", "Depressive disorder"),
    ("399211009", "History of myocardial infarction"),
]
MEDS = [
    ("325278009", "Metformin 500mg modified-release tablets"),
    ("318856002", "Ramipril 5mg capsules"),
    ("320176004", "Salbutamol 100micrograms/dose inhaler"),
    ("321987003", "Sertraline 50mg tablets"),
    ("319996000", "Atorvastatin 20mg tablets"),
]
ALLERGIES = [
    ("91936005", "Allergy to penicillin"),
    ("300913006", "Shellfish allergy"),
    ("293586001", "Allergy to aspirin"),
]


def entry(resource):
    return {
        "fullUrl": f"urn:uuid:demo-{resource['resourceType'].lower()}-{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def main():
    entries = []
    for ods, name, postcode, city in PRACTICES:
        entries.append(entry({
            "resourceType": "Organization",
            "id": f"demo-{ods.lower()}",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}],
            "active": True,
            "type": [{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/organisation-role", "code": "76", "display": "GP PRACTICE"}]}],
            "name": name,
            "address": [{"city": city, "postalCode": postcode, "country": "GB"}],
        }))
    for code, family, given, practice in GPS:
        entries.append(entry({
            "resourceType": "Practitioner",
            "id": f"demo-{code.lower()}",
            "identifier": [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": code[1:]}],
            "name": [{"family": family, "given": [given], "prefix": ["Dr"]}],
        }))
    gen = numbers()
    for i, (given, family, gender, dob, line, city, postcode, practice) in enumerate(PATIENTS):
        nhs = next(gen)
        pid = f"demo-patient-{i + 1}"
        ods = PRACTICES[practice][0]
        gp = GPS[practice][0]
        entries.append(entry({
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "active": True,
            "name": [{"use": "usual", "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": f"0113 496 00{i:02d}", "use": "home"}],
            "gender": gender,
            "birthDate": dob,
            "address": [{"use": "home", "line": [line], "city": city, "postalCode": postcode, "country": "GB"}],
            "generalPractitioner": [{"reference": f"Organization/demo-{ods.lower()}",
                                     "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}}],
        }))
        enc = f"demo-encounter-{i + 1}"
        entries.append(entry({
            "resourceType": "Encounter",
            "id": enc,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}]}],
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"individual": {"reference": f"Practitioner/demo-{gp.lower()}"}}],
            "period": {"start": f"2026-0{(i % 9) + 1}-1{i}T09:30:00Z", "end": f"2026-0{(i % 9) + 1}-1{i}T09:45:00Z"},
            "serviceProvider": {"reference": f"Organization/demo-{ods.lower()}"},
        }))
        for k in range(2):
            code, display = CONDITIONS[(i + k) % len(CONDITIONS)]
            entries.append(entry({
                "resourceType": "Condition",
                "id": f"demo-condition-{i + 1}-{k + 1}",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                "subject": {"reference": f"Patient/{pid}"},
                "onsetDateTime": f"{2010 + i + k}-0{k + 3}-15",
                "recordedDate": f"{2010 + i + k}-0{k + 3}-16",
            }))
        vitals = [
            ("8867-4", "Heart rate", 62 + i * 4, "/min", "/min"),
            ("29463-7", "Body weight", 61.5 + i * 6.2, "kg", "kg"),
            ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 41 + i * 3, "mmol/mol", "mmol/mol"),
        ]
        for k, (loinc, display, value, unit, ucum) in enumerate(vitals):
            entries.append(entry({
                "resourceType": "Observation",
                "id": f"demo-observation-{i + 1}-{k + 1}",
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "laboratory" if loinc == "4548-4" else "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}]},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{enc}"},
                "effectiveDateTime": f"2026-0{(i % 9) + 1}-1{i}T09:40:00Z",
                "valueQuantity": {"value": round(value, 1), "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum},
            }))
        code, display = MEDS[i % len(MEDS)]
        entries.append(entry({
            "resourceType": "MedicationRequest",
            "id": f"demo-medicationrequest-{i + 1}",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": f"2026-0{(i % 9) + 1}-1{i}",
            "requester": {"reference": f"Practitioner/demo-{gp.lower()}"},
            "dosageInstruction": [{"text": "As directed"}],
        }))
        if i < len(ALLERGIES):
            code, display = ALLERGIES[i]
            entries.append(entry({
                "resourceType": "AllergyIntolerance",
                "id": f"demo-allergy-{i + 1}",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                "patient": {"reference": f"Patient/{pid}"},
                "recordedDate": "2019-05-01",
            }))
    print(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
