#!/usr/bin/env python3
"""Generate the compact R4 tables that the `carelayer-fhir` crate embeds.

Source: the official package `hl7.fhir.r4.examples@4.0.1` from the npm registry
(the same conformance resources as `hl7.fhir.r4.core`, which is not on npm).

    python3 scripts/gen_r4_tables.py [PACKAGE_DIR]

Without PACKAGE_DIR the package is fetched with `npm pack` into `.cache/fhir-r4/`.
Writes `crates/fhir/generated/*.json` (compact JSON, committed, so a build needs no
network). Re-running on the same package gives byte-identical output.
"""
import glob
import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "fhir", "generated")
PKG = "hl7.fhir.r4.examples@4.0.1"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def fetch_package():
    cache = os.path.join(ROOT, ".cache", "fhir-r4")
    pkg_dir = os.path.join(cache, "package")
    if os.path.isdir(pkg_dir):
        return pkg_dir
    os.makedirs(cache, exist_ok=True)
    subprocess.run(["npm", "pack", PKG, "--silent"], cwd=cache, check=True)
    tgz = glob.glob(os.path.join(cache, "hl7.fhir.r4.examples-*.tgz"))[0]
    with tarfile.open(tgz) as t:
        t.extractall(cache)
    return pkg_dir


def load(pkg, pattern):
    for path in sorted(glob.glob(os.path.join(pkg, pattern))):
        with open(path, encoding="utf-8") as f:
            yield json.load(f)


def strip_version(url):
    return url.split("|")[0] if url else url


def type_code(t):
    """The FHIR type of an ElementDefinition.type entry (System.* types carry the FHIR name in an extension)."""
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return ext["valueUrl"]
        return code.rsplit(".", 1)[1].lower()
    return code


def structures(pkg):
    """Base types only (specializations): resources, complex and primitive data types."""
    types = {}
    regexes = {}
    for sd in load(pkg, "StructureDefinition-*.json"):
        if sd.get("derivation") == "constraint" or sd["kind"] == "logical":
            continue
        name = sd["type"]
        if sd["kind"] == "primitive-type":
            for e in sd["snapshot"]["element"]:
                if e["path"].endswith(".value"):
                    for ext in e["type"][0].get("extension", []):
                        if ext["url"] == REGEX_EXT:
                            regexes[name] = ext["valueString"]
        elements = []
        for e in sd["snapshot"]["element"][1:]:
            path = e["path"].split(".", 1)[1]
            row = {"p": path, "min": e.get("min", 0), "max": e.get("max", "*")}
            if "contentReference" in e:
                row["ref"] = e["contentReference"].lstrip("#").split(".", 1)[1]
            else:
                ts = []
                for t in e.get("type", []):
                    tc = type_code(t)
                    if tc not in ts:
                        ts.append(tc)
                row["t"] = ts
                targets = []
                for t in e.get("type", []):
                    for prof in t.get("targetProfile", []):
                        targets.append(prof.rsplit("/", 1)[1])
                if targets:
                    row["targets"] = targets
            b = e.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                row["vs"] = strip_version(b["valueSet"])
            if e.get("isSummary"):
                row["sum"] = 1
            if e.get("isModifier"):
                row["mod"] = 1
            elements.append(row)
        types[name] = {
            "kind": sd["kind"],
            "abstract": bool(sd.get("abstract")),
            "base": sd.get("baseDefinition", "").rsplit("/", 1)[-1] or None,
            "elements": elements,
        }
    return types, regexes


def codesystems(pkg):
    out = {}
    for cs in load(pkg, "CodeSystem-*.json"):
        if cs.get("content") != "complete":
            continue
        codes = []

        def walk(concepts):
            for c in concepts:
                codes.append(c["code"])
                walk(c.get("concept", []))

        walk(cs.get("concept", []))
        out[cs["url"]] = codes
    return out


def valuesets(pkg, needed, cs_codes):
    """Expand the required-binding value sets whose compose is fully enumerable from this package."""
    vs_by_url = {vs["url"]: vs for vs in load(pkg, "ValueSet-*.json")}
    memo = {}

    def expand(url, depth=0):
        if url in memo:
            return memo[url]
        vs = vs_by_url.get(url)
        if vs is None or depth > 8 or "compose" not in vs:
            memo[url] = None
            return None
        codes = {}
        for inc in vs["compose"].get("include", []):
            if inc.get("filter"):
                memo[url] = None
                return None
            part = set()
            sys_url = inc.get("system")
            if inc.get("concept"):
                part = {c["code"] for c in inc["concept"]}
            elif sys_url:
                if sys_url not in cs_codes:
                    memo[url] = None
                    return None
                part = set(cs_codes[sys_url])
            for imp in inc.get("valueSet", []):
                sub = expand(strip_version(imp), depth + 1)
                if sub is None:
                    memo[url] = None
                    return None
                for s, cs in sub.items():
                    if part and not sys_url:
                        pass
                    codes.setdefault(s, set()).update(cs)
            if sys_url:
                codes.setdefault(sys_url, set()).update(part)
        for exc in vs["compose"].get("exclude", []):
            s = exc.get("system")
            if s in codes and exc.get("concept"):
                codes[s] -= {c["code"] for c in exc["concept"]}
        memo[url] = codes
        return codes

    out = {}
    for url in sorted(needed):
        exp = expand(url)
        if exp:
            out[url] = {s: sorted(c) for s, c in sorted(exp.items())}
    return out


def search_parameters(pkg):
    out = []
    for sp in load(pkg, "SearchParameter-*.json"):
        # The package also holds example SearchParameters (extension-based, or
        # illustrating the resource itself); only the core definitions apply.
        if "base" not in sp or not sp["url"].startswith("http://hl7.org/fhir/SearchParameter/"):
            continue
        if sp["id"].endswith("-example") or "example" in sp["id"].split("-"):
            continue
        row = {
            "url": sp["url"],
            "code": sp["code"],
            "base": sp["base"],
            "type": sp["type"],
        }
        for key in ("expression", "target", "modifier", "comparator", "multipleOr", "multipleAnd"):
            if key in sp:
                row[key] = sp[key]
        if "component" in sp:
            row["component"] = [
                {"definition": c["definition"], "expression": c["expression"]} for c in sp["component"]
            ]
        out.append(row)
    out.sort(key=lambda r: r["url"])
    return out


def compartments(pkg):
    out = {}
    for cd in load(pkg, "CompartmentDefinition-*.json"):
        if cd["id"] == "example":
            continue
        out[cd["code"]] = {r["code"]: r.get("param", []) for r in cd["resource"] if r.get("param")}
    return out


def write(name, value):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(value, f, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        f.write("\n")


def main():
    pkg = sys.argv[1] if len(sys.argv) > 1 else fetch_package()
    types, regexes = structures(pkg)
    needed = {e["vs"] for t in types.values() for e in t["elements"] if "vs" in e}
    write("structures.json", {"types": types, "primitive_regex": regexes})
    write("valuesets.json", valuesets(pkg, needed, codesystems(pkg)))
    write("search-parameters.json", search_parameters(pkg))
    write("compartments.json", compartments(pkg))
    for f in sorted(os.listdir(OUT)):
        print(f"{f}: {os.path.getsize(os.path.join(OUT, f)):,} bytes")


if __name__ == "__main__":
    main()
