//! Asking policy: the facts a decision needs, gathered from the store and
//! cached, and the one place every path (read, vread, history, search hits,
//! includes, `$everything`, writes, transactions, imports) asks
//! `carelayer_policy::decide`.
//!
//! - **Patient facts** (registered practice, S-flag, encounters and
//!   episodes, care teams, Consents) cost one read and one compartment query
//!   per patient, with organisation references resolved to ODS codes. They
//!   are cached until a write touches them: the commit path calls
//!   [`FactsCache::forget`] for every Patient, Encounter, EpisodeOfCare,
//!   CareTeam or Consent it wrote (any Organization write clears the cache,
//!   as ODS codes may have changed). A generation counter keeps a load that
//!   raced a write out of the cache, so a Consent withdrawal binds the very
//!   next request.
//! - **Resource facts** (security labels, codes, creating organisation) come
//!   from the resource itself; a stored resource is parsed only when they
//!   can matter (it has labels, or its patient has Consents).
//! - Within a write plan, facts overlay the writes planned so far, so a
//!   transaction that registers a patient at the caller's practice can
//!   record their first observation too.
//!
//! The cache is per process. Several servers sharing one PostgreSQL
//! database must run with `facts_cache_entries = 0` (see
//! docs/scale-out.md), or another server's Consent change would bind here
//! only after it is evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use carelayer_policy::facts::ods_code_of_organization;
use carelayer_policy::{
    Action, CareEpisode, CareTeamFacts, ConsentRule, Decision, Facts, PatientFacts, Principal,
    Request, ResourceFacts,
};
use carelayer_store::{
    Clause, IndexTest, Predicate, Prefix, ResourceWrite, SearchQuery, StoreError,
};
use serde_json::Value;

use crate::{Caller, Records, RecordsError, Version, clock};

/// Types in a patient's compartment that are facts about the patient.
pub(crate) const FACT_TYPES: &[&str] = &["Encounter", "EpisodeOfCare", "CareTeam", "Consent"];

/// Compartment rows fetched per query while loading a patient's facts.
const FACTS_PAGE: usize = 1_000;

/// What a decision is about.
pub(crate) struct Subject<'a> {
    pub resource_type: &'a str,
    /// The Patient compartment owner.
    pub patient: Option<&'a str>,
    pub resource: Body<'a>,
}

impl<'a> Subject<'a> {
    /// A stored version.
    pub(crate) fn of(version: &'a Version) -> Self {
        Self {
            resource_type: &version.resource_type,
            patient: version.patient.as_deref(),
            resource: if version.deleted {
                Body::None
            } else {
                Body::Json(&version.json)
            },
        }
    }
}

/// Apply a permit's element redactions (S-flag) to a version about to be
/// returned. Fails closed: a resource that cannot be redacted is not
/// returned at all.
pub(crate) fn redact(decision: &Decision, version: &mut Version) -> Result<(), RecordsError> {
    let Decision::Permit { redactions, .. } = decision else {
        return Ok(());
    };
    if !redactions
        .iter()
        .any(|r| matches!(r, carelayer_policy::Redaction::RemoveElements(_)))
        || version.json.is_empty()
    {
        return Ok(());
    }
    let mut v = parse_stored(&version.json)?;
    decision.redact(&mut v);
    version.json = serde_json::to_vec(&v)
        .map_err(|e| RecordsError::Store(StoreError::Other(format!("cannot serialise: {e}"))))?;
    Ok(())
}

/// The resource's content, as far as it is known.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    /// Not known (a type-level refusal, a deletion's audit).
    None,
    /// Stored compact JSON.
    Json(&'a [u8]),
    /// A parsed resource (writes).
    Value(&'a Value),
}

/// Cached patient facts (see the module docs).
pub(crate) struct FactsCache {
    patients: Mutex<HashMap<String, Option<Arc<PatientFacts>>>>,
    /// `Organization/id` → its ODS code (`None`: no such organisation or no
    /// ODS identifier).
    orgs: Mutex<HashMap<String, Option<String>>>,
    generation: AtomicU64,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain data: a panic elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FactsCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            patients: Mutex::new(HashMap::new()),
            orgs: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            capacity,
        }
    }

    fn get(&self, patient: &str) -> Option<Option<Arc<PatientFacts>>> {
        if self.capacity == 0 {
            return None;
        }
        lock(&self.patients).get(patient).cloned()
    }

    fn put(&self, patient: &str, facts: Option<Arc<PatientFacts>>, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut map = lock(&self.patients);
        // Checked under the lock `forget` takes after bumping it.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(patient.to_owned(), facts);
    }

    /// Forget what a committed write set made stale (see [`stale_after`]).
    pub(crate) fn forget(&self, stale: Stale) {
        if matches!(stale, Stale::Nothing) {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut map = lock(&self.patients);
        match stale {
            Stale::Nothing => {}
            Stale::Patients(patients) => {
                for p in patients {
                    map.remove(&p);
                }
            }
            Stale::Everything => {
                map.clear();
                lock(&self.orgs).clear();
            }
        }
    }
}

/// What committing a write set makes the facts cache forget.
pub(crate) enum Stale {
    Nothing,
    /// These patients' facts.
    Patients(Vec<String>),
    /// Everything: an Organization changed (ODS codes), or a fact-bearing
    /// resource was deleted (a deletion carries no `patient_key`, so its
    /// patient is unknown here).
    Everything,
}

/// Computed from the planned writes before they go to the store; applied
/// with [`FactsCache::forget`] once they committed.
pub(crate) fn stale_after(writes: &[ResourceWrite]) -> Stale {
    let mut patients = Vec::new();
    for w in writes {
        let ty = w.resource_type.as_str();
        if ty == "Organization" {
            return Stale::Everything;
        }
        if ty != "Patient" && !FACT_TYPES.contains(&ty) {
            continue;
        }
        match (&w.patient_key, ty) {
            (Some(p), _) => patients.push(p.clone()),
            (None, "Patient") => patients.push(w.id.clone()),
            (None, _) => return Stale::Everything,
        }
    }
    if patients.is_empty() {
        Stale::Nothing
    } else {
        Stale::Patients(patients)
    }
}

impl Records {
    /// Decide one access, gathering the facts it needs. A break-glass
    /// permit marks the caller's [`crate::BreakGlass`].
    ///
    /// # Errors
    /// Store errors while gathering facts.
    pub(crate) async fn decide(
        &self,
        caller: &Caller,
        action: Action,
        subject: &Subject<'_>,
        pending: &[ResourceWrite],
    ) -> Result<Decision, RecordsError> {
        let request = Request::new(action, subject.resource_type, subject.patient)
            .with_break_glass(caller.break_glass.as_ref().map(crate::BreakGlass::reason));
        if caller.principal == Principal::LocalOperator {
            // The operator's direct-care decisions use no facts.
            return Ok(carelayer_policy::decide(
                &caller.principal,
                &request,
                &Facts::default(),
            ));
        }
        let patient = match subject.patient {
            Some(id) => self.patient_facts(id, pending).await?,
            None => None,
        };
        let resource = match subject.resource {
            Body::None => ResourceFacts::default(),
            Body::Value(v) => self.resource_facts(v).await?,
            Body::Json(bytes) => {
                let has_consents = patient.as_ref().is_some_and(|p| !p.consents.is_empty());
                if has_consents || SECURITY_KEY.find(bytes).is_some() {
                    match ResourceFacts::from_slice(bytes) {
                        Ok(facts) => self.resolve_episode_org(facts).await?,
                        Err(e) => {
                            return Err(RecordsError::Store(StoreError::Other(format!(
                                "stored {} is not JSON: {e}",
                                subject.resource_type
                            ))));
                        }
                    }
                } else {
                    ResourceFacts::default()
                }
            }
        };
        let facts = Facts {
            now: clock::now_micros(),
            relationship_window: i64::try_from(self.options.relationship_window.as_micros())
                .unwrap_or(i64::MAX),
            patient,
            resource,
        };
        let decision = carelayer_policy::decide(&caller.principal, &request, &facts);
        if decision.is_break_glass()
            && let Some(glass) = &caller.break_glass
        {
            glass.mark_used();
        }
        Ok(decision)
    }

    async fn resource_facts(&self, resource: &Value) -> Result<ResourceFacts, RecordsError> {
        self.resolve_episode_org(ResourceFacts::from_json(resource))
            .await
    }

    /// An episode's organisation named by reference, resolved to its ODS
    /// code (the relationship rule compares ODS codes).
    async fn resolve_episode_org(
        &self,
        mut facts: ResourceFacts,
    ) -> Result<ResourceFacts, RecordsError> {
        if facts
            .episode_org
            .as_ref()
            .is_some_and(|o| o.ods().is_none())
        {
            let map = self.resolve_org_refs(|r| facts.resolve_orgs(&r)).await?;
            facts.resolve_orgs(&|r: &str| map.get(r).cloned().flatten());
        }
        Ok(facts)
    }

    /// The facts about patient `id`, overlaid with the planned `pending`
    /// writes. `None` when there is no such (live) Patient.
    async fn patient_facts(
        &self,
        id: &str,
        pending: &[ResourceWrite],
    ) -> Result<Option<Arc<PatientFacts>>, RecordsError> {
        let base = match self.facts.get(id) {
            Some(cached) => cached,
            None => {
                let generation = self.facts.generation.load(Ordering::Acquire);
                let loaded = self.load_patient_facts(id).await?.map(Arc::new);
                self.facts.put(id, loaded.clone(), generation);
                loaded
            }
        };
        let relevant: Vec<&ResourceWrite> = pending
            .iter()
            .filter(|w| {
                (w.resource_type == "Patient" && w.id == id)
                    || (FACT_TYPES.contains(&w.resource_type.as_str())
                        && w.patient_key.as_deref() == Some(id))
            })
            .collect();
        if relevant.is_empty() {
            return Ok(base);
        }
        // Rebuild from the store's view plus the plan (rare: writes of
        // fact-bearing resources within one plan).
        let mut resources = self.fact_resources(id).await?;
        for w in relevant {
            resources.retain(|(ty, rid, _)| !(ty == &w.resource_type && rid == &w.id));
            if !w.deleted
                && let Ok(v) = serde_json::from_slice::<Value>(&w.json)
            {
                resources.push((w.resource_type.clone(), w.id.clone(), v));
            }
        }
        Ok(self.build_patient_facts(resources).await?.map(Arc::new))
    }

    async fn load_patient_facts(&self, id: &str) -> Result<Option<PatientFacts>, RecordsError> {
        let resources = self.fact_resources(id).await?;
        self.build_patient_facts(resources).await
    }

    /// The live Patient and the patient's fact-bearing resources, parsed.
    async fn fact_resources(&self, id: &str) -> Result<Vec<(String, String, Value)>, RecordsError> {
        let mut out = Vec::new();
        if let Some(p) = self.store.read_current("Patient", id).await?
            && !p.deleted
        {
            out.push(("Patient".to_owned(), p.id, parse_stored(&p.json)?));
        }
        // Episodes count for a relationship only while open or for
        // `relationship_window` after they end (policy's rule), and an
        // episode that has ended that long ago never counts again; so only
        // those that are open or ended since then are loaded, not every
        // Encounter of the patient's life. The filter is a superset of what
        // the rule can use (`CareEpisode` decides exactly).
        let window =
            i64::try_from(self.options.relationship_window.as_micros()).unwrap_or(i64::MAX);
        // A second of slack against the date index's precision edges.
        let since = clock::now_micros()
            .saturating_sub(window)
            .saturating_sub(1_000_000);
        let open_statuses = [
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "waitlist",
            "active",
            "onhold",
        ];
        let mut episodes = Clause {
            any_of: open_statuses
                .iter()
                .map(|status| Predicate::Index {
                    param: "status".into(),
                    test: IndexTest::Token {
                        system: None,
                        code: (*status).to_owned(),
                    },
                })
                .collect(),
        };
        episodes.any_of.push(Predicate::Index {
            param: "date".into(),
            test: IndexTest::Date {
                prefix: Prefix::Ge,
                low: since,
                high: since,
            },
        });
        let of_patient = Clause {
            any_of: vec![Predicate::PatientKey(id.to_owned())],
        };
        let mut snapshot = None;
        for (types, clauses) in [
            (
                &["Encounter", "EpisodeOfCare"][..],
                vec![of_patient.clone(), episodes],
            ),
            (&["CareTeam", "Consent"][..], vec![of_patient]),
        ] {
            let mut offset = 0;
            loop {
                let query = SearchQuery {
                    resource_types: types.iter().map(|t| (*t).to_owned()).collect(),
                    clauses: clauses.clone(),
                    offset,
                    count: FACTS_PAGE,
                    snapshot_seq: snapshot,
                    ..SearchQuery::default()
                };
                let page = self.store.search(&query).await?;
                snapshot = Some(page.snapshot_seq);
                let n = page.matches.len();
                for m in page.matches.into_iter().take(FACTS_PAGE) {
                    let v = parse_stored(&m.json)?;
                    out.push((m.resource_type, m.id, v));
                }
                if n < FACTS_PAGE {
                    break;
                }
                offset += FACTS_PAGE;
            }
        }
        Ok(out)
    }

    async fn build_patient_facts(
        &self,
        resources: Vec<(String, String, Value)>,
    ) -> Result<Option<PatientFacts>, RecordsError> {
        let Some(patient) = resources
            .iter()
            .find(|(ty, _, _)| ty == "Patient")
            .map(|(_, _, v)| v)
        else {
            return Ok(None);
        };
        let mut facts = PatientFacts::from_patient_json(patient);
        for (ty, id, v) in &resources {
            match ty.as_str() {
                "Encounter" | "EpisodeOfCare" => facts.episodes.extend(CareEpisode::from_json(v)),
                "CareTeam" => facts.care_teams.extend(CareTeamFacts::from_json(v)),
                "Consent" => match ConsentRule::from_json(v) {
                    Ok(rule) => facts.consents.push(rule),
                    Err(e) => {
                        // Writes refuse unreadable Consents, so this is old
                        // or imported data: fail closed for the patient.
                        tracing::warn!(consent = %id, error = %e, "unreadable Consent: treating it as a deny of everything");
                        facts.consents.push(deny_everything(id));
                    }
                },
                _ => {}
            }
        }
        let map = self.resolve_org_refs(|r| facts.resolve_orgs(&r)).await?;
        facts.resolve_orgs(&|r: &str| map.get(r).cloned().flatten());
        Ok(Some(facts))
    }

    /// Resolve the organisation references `visit` asks about (it is called
    /// with a resolver that records them) to ODS codes, via the cache.
    async fn resolve_org_refs(
        &self,
        visit: impl FnOnce(&dyn Fn(&str) -> Option<String>),
    ) -> Result<HashMap<String, Option<String>>, RecordsError> {
        let wanted = Mutex::new(Vec::<String>::new());
        visit(&|r: &str| {
            lock(&wanted).push(r.to_owned());
            None
        });
        let wanted = wanted.into_inner().unwrap_or_else(PoisonError::into_inner);
        let mut out = HashMap::new();
        for reference in wanted {
            if out.contains_key(&reference) {
                continue;
            }
            if let Some(known) = lock(&self.facts.orgs).get(&reference).cloned() {
                out.insert(reference, known);
                continue;
            }
            let id = reference
                .rsplit_once("Organization/")
                .map(|(_, id)| id.split(['/', '?', '#']).next().unwrap_or(id));
            let ods = match id {
                Some(id) if crate::is_valid_id(id) => {
                    match self.store.read_current("Organization", id).await? {
                        Some(o) if !o.deleted => ods_code_of_organization(&parse_stored(&o.json)?),
                        _ => None,
                    }
                }
                _ => None,
            };
            if self.facts.capacity > 0 {
                lock(&self.facts.orgs).insert(reference.clone(), ods.clone());
            }
            out.insert(reference, ods);
        }
        Ok(out)
    }
}

fn parse_stored(bytes: &[u8]) -> Result<Value, RecordsError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RecordsError::Store(StoreError::Other(format!(
            "stored resource is not JSON: {e}"
        )))
    })
}

/// A Consent rule that denies every access (for a Consent we cannot read).
fn deny_everything(id: &str) -> ConsentRule {
    ConsentRule {
        id: Some(id.to_owned()),
        status: carelayer_policy::ConsentStatus::Active,
        kind: carelayer_policy::ConsentKind::Choice,
        scope: Some("patient-privacy".into()),
        provision: Some(carelayer_policy::consent::Provision {
            kind: carelayer_policy::consent::ProvisionType::Deny,
            period: None,
            actors: Vec::new(),
            actions: Vec::new(),
            security_labels: Vec::new(),
            classes: Vec::new(),
            codes: Vec::new(),
            purposes: Vec::new(),
            provisions: Vec::new(),
        }),
    }
}

/// Built once: building a searcher costs more than running it over one
/// resource, and `decide` asks once per resource disclosed.
static SECURITY_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"security\""));

impl Records {
    /// The number of matches of `parsed` the caller may see, when the store
    /// counted `all` (`_total`, `_summary=count`): counts must not leak
    /// withheld resources. Above the paging snapshot cap the caller's total
    /// is not computed and the Bundle carries none.
    pub(crate) async fn visible_total(
        &self,
        caller: &Caller,
        parsed: &crate::search::ParsedSearch,
        all: u64,
    ) -> Result<Option<u64>, RecordsError> {
        if caller.principal == Principal::LocalOperator || all == 0 {
            return Ok(Some(all));
        }
        let cap = self.options.search_snapshot_max;
        if usize::try_from(all).map_or(true, |n| n > cap) {
            return Ok(None);
        }
        let query = SearchQuery {
            offset: 0,
            count: cap,
            total: carelayer_store::TotalMode::None,
            snapshot_seq: None,
            keys_only: false,
            bodies: None,
            sort: Vec::new(),
            ..parsed.query.clone()
        };
        let matches: Vec<Version> = self
            .store
            .search(&query)
            .await?
            .matches
            .into_iter()
            .map(Version::from)
            .collect();
        let matches = self
            .without_hidden_links(caller, &query.clauses, matches)
            .await?;
        let params: Vec<&str> = parsed.applied.iter().map(|(k, _)| k.as_str()).collect();
        let mut n = 0u64;
        for v in &matches {
            let d = self
                .decide(caller, Action::Search, &Subject::of(v), &[])
                .await?;
            if d.is_permit() && !d.hidden_from_search(params.iter().copied()) {
                n += 1;
            }
        }
        Ok(Some(n))
    }
}

/// Witnesses examined per link when checking a chained or `_has` match.
const LINK_WITNESSES: usize = 100;

/// Deepest chain or `_has` nesting re-checked (the parser allows no more).
const LINK_DEPTH: usize = 4;

impl Records {
    /// The versions the caller may read (decided, not audited: nothing is
    /// disclosed here). Used where a withheld resource must not lead
    /// anywhere: the frontier of `_include`, the witnesses of chains and
    /// `_has`.
    pub(crate) async fn readable(
        &self,
        caller: &Caller,
        versions: Vec<Version>,
    ) -> Result<Vec<Version>, RecordsError> {
        if caller.principal == Principal::LocalOperator {
            return Ok(versions);
        }
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            if self
                .decide(caller, Action::Search, &Subject::of(&v), &[])
                .await?
                .is_permit()
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Drop the hits that matched a chain or `_has` only through resources
    /// the caller may not read: no inference through a withheld resource
    /// (a `Patient?_has:Observation:…` hit must not reveal an Observation
    /// its searcher cannot see).
    pub(crate) async fn without_hidden_links(
        &self,
        caller: &Caller,
        clauses: &[Clause],
        hits: Vec<Version>,
    ) -> Result<Vec<Version>, RecordsError> {
        if caller.principal == Principal::LocalOperator || !has_links(clauses) {
            return Ok(hits);
        }
        if let Some(witnessed) = self.links_visible_together(caller, clauses, &hits).await? {
            return Ok(hits
                .into_iter()
                .filter(|h| witnessed.contains(&(h.resource_type.clone(), h.id.clone())))
                .collect());
        }
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            if Box::pin(self.links_visible(caller, clauses, &hit, 0)).await? {
                out.push(hit);
            }
        }
        Ok(out)
    }

    /// Does every clause made only of links have a readable witness for
    /// `hit`? (A clause mixing links with other tests is left to the
    /// store: FHIR search syntax cannot write one.)
    async fn links_visible(
        &self,
        caller: &Caller,
        clauses: &[Clause],
        hit: &Version,
        depth: usize,
    ) -> Result<bool, RecordsError> {
        if depth > LINK_DEPTH {
            return Ok(false);
        }
        for clause in clauses {
            if !links_only(clause) {
                continue;
            }
            let mut witnessed = false;
            for predicate in &clause.any_of {
                let Some((_, query)) = witness_query(
                    predicate,
                    &hit.resource_type,
                    std::slice::from_ref(&hit.id),
                    LINK_WITNESSES,
                ) else {
                    continue;
                };
                let witnesses: Vec<Version> = self
                    .store
                    .search(&query)
                    .await?
                    .matches
                    .into_iter()
                    .map(Version::from)
                    .collect();
                let inner = match predicate {
                    Predicate::Chain { query, .. } | Predicate::Has { query, .. } => &query.clauses,
                    _ => continue,
                };
                for w in self.readable(caller, witnesses).await? {
                    if Box::pin(self.links_visible(caller, inner, &w, depth + 1)).await? {
                        witnessed = true;
                        break;
                    }
                }
                if witnessed {
                    break;
                }
            }
            if !witnessed {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

type HitKey = (String, String);

impl Records {
    /// [`Records::without_hidden_links`] for a whole page in a few queries
    /// instead of one per hit and link: per link, the witnesses of every hit
    /// at once, which of them the caller may read, then which hits link to
    /// a readable one. Returns the hits witnessed for every links-only
    /// clause, or `None` (the caller checks hit by hit) when a link's inner
    /// query has links of its own or the witnesses are too many to list.
    async fn links_visible_together(
        &self,
        caller: &Caller,
        clauses: &[Clause],
        hits: &[Version],
    ) -> Result<Option<std::collections::HashSet<HitKey>>, RecordsError> {
        use std::collections::HashSet;
        let mut passing: HashSet<HitKey> = hits
            .iter()
            .map(|h| (h.resource_type.clone(), h.id.clone()))
            .collect();
        for clause in clauses {
            if !links_only(clause) {
                continue;
            }
            let mut witnessed: HashSet<HitKey> = HashSet::new();
            for predicate in &clause.any_of {
                let (Predicate::Chain { query, .. } | Predicate::Has { query, .. }) = predicate
                else {
                    continue;
                };
                if has_links(&query.clauses) {
                    return Ok(None);
                }
                for group in by_type(hits) {
                    let Some(found) = self.linked_readable(caller, predicate, &group).await? else {
                        return Ok(None);
                    };
                    witnessed.extend(found);
                }
            }
            passing.retain(|h| witnessed.contains(h));
        }
        Ok(Some(passing))
    }

    /// The hits of one type (`group`) that `predicate` links to a resource
    /// the caller may read; `None` if the witnesses exceed one page.
    async fn linked_readable(
        &self,
        caller: &Caller,
        predicate: &Predicate,
        group: &[&Version],
    ) -> Result<Option<Vec<HitKey>>, RecordsError> {
        let Some(hit_type) = group.first().map(|h| h.resource_type.clone()) else {
            return Ok(Some(Vec::new()));
        };
        let hit_ids: Vec<String> = group.iter().map(|h| h.id.clone()).collect();
        // Step 1: every witness of any hit in the group (with bodies:
        // readability depends on the witness's labels).
        let Some((witness_type, witness_query)) =
            witness_query(predicate, &hit_type, &hit_ids, BATCH_WITNESSES + 1)
        else {
            return Ok(Some(Vec::new()));
        };
        let found = self.store.search(&witness_query).await?.matches;
        if found.len() > BATCH_WITNESSES {
            return Ok(None);
        }
        let readable: Vec<String> = self
            .readable(caller, found.into_iter().map(Version::from).collect())
            .await?
            .into_iter()
            .map(|w| w.id)
            .collect();
        if readable.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // Step 2: the hits that link to a readable witness.
        let link = match predicate {
            Predicate::Chain { param, .. } => Clause {
                any_of: readable
                    .into_iter()
                    .map(|id| Predicate::Index {
                        param: param.clone(),
                        test: carelayer_store::IndexTest::Reference {
                            target_type: Some(witness_type.clone()),
                            id,
                        },
                    })
                    .collect(),
            },
            Predicate::Has {
                source_type, param, ..
            } => Clause {
                any_of: vec![Predicate::Has {
                    source_type: source_type.clone(),
                    param: param.clone(),
                    query: of_ids(source_type, readable),
                }],
            },
            _ => return Ok(Some(Vec::new())),
        };
        let linked = SearchQuery {
            resource_types: vec![hit_type.clone()],
            clauses: vec![id_clause(hit_ids), link],
            count: group.len().max(1),
            keys_only: true,
            ..SearchQuery::default()
        };
        Ok(Some(
            self.store
                .search(&linked)
                .await?
                .matches
                .into_iter()
                .map(|m| (m.resource_type, m.id))
                .collect(),
        ))
    }
}

/// Most witnesses listed in one batched check before checking hit by hit.
const BATCH_WITNESSES: usize = 1_000;

/// Hits grouped by resource type, in first-seen order.
fn by_type(hits: &[Version]) -> Vec<Vec<&Version>> {
    let mut groups: Vec<Vec<&Version>> = Vec::new();
    for hit in hits {
        match groups.iter_mut().find(|g| {
            g.first()
                .is_some_and(|f| f.resource_type == hit.resource_type)
        }) {
            Some(g) => g.push(hit),
            None => groups.push(vec![hit]),
        }
    }
    groups
}

fn has_links(clauses: &[Clause]) -> bool {
    clauses.iter().any(|c| {
        c.any_of
            .iter()
            .any(|p| matches!(p, Predicate::Chain { .. } | Predicate::Has { .. }))
    })
}

/// The resources that make `predicate` true for any of the hits `hit_ids`
/// (all of type `hit_type`), with their type: for a chain, the targets the
/// hits refer to that match the chained query; for `_has`, the sources
/// referring to a hit that match the reverse query.
fn witness_query(
    predicate: &Predicate,
    hit_type: &str,
    hit_ids: &[String],
    count: usize,
) -> Option<(String, SearchQuery)> {
    let (witness_type, link) = match predicate {
        Predicate::Chain {
            param, target_type, ..
        } => (
            target_type,
            Clause {
                any_of: vec![Predicate::Has {
                    source_type: hit_type.to_owned(),
                    param: param.clone(),
                    query: of_ids(hit_type, hit_ids.to_vec()),
                }],
            },
        ),
        Predicate::Has {
            source_type, param, ..
        } => (
            source_type,
            Clause {
                any_of: hit_ids
                    .iter()
                    .map(|id| Predicate::Index {
                        param: param.clone(),
                        test: carelayer_store::IndexTest::Reference {
                            target_type: Some(hit_type.to_owned()),
                            id: id.clone(),
                        },
                    })
                    .collect(),
            },
        ),
        _ => return None,
    };
    let (Predicate::Chain { query, .. } | Predicate::Has { query, .. }) = predicate else {
        return None;
    };
    let mut clauses = query.clauses.clone();
    clauses.push(link);
    Some((
        witness_type.clone(),
        SearchQuery {
            resource_types: vec![witness_type.clone()],
            clauses,
            count,
            ..SearchQuery::default()
        },
    ))
}

/// A clause made only of chains and `_has` (checked for witnesses).
fn links_only(clause: &Clause) -> bool {
    !clause.any_of.is_empty()
        && clause
            .any_of
            .iter()
            .all(|p| matches!(p, Predicate::Chain { .. } | Predicate::Has { .. }))
}

/// `_id` is any of `ids`.
fn id_clause(ids: Vec<String>) -> Clause {
    Clause {
        any_of: ids.into_iter().map(Predicate::Id).collect(),
    }
}

/// The resources of type `ty` with any of `ids` (an inner query).
fn of_ids(ty: &str, ids: Vec<String>) -> Box<SearchQuery> {
    Box::new(SearchQuery {
        resource_types: vec![ty.to_owned()],
        clauses: vec![id_clause(ids)],
        ..SearchQuery::default()
    })
}
