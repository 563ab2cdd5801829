//! The HTTP face of the pre-provisioning service: the device application (claims 000: 1, 2, 7, 8),
//! the management application (claims 000: 5, 6, 11, 12) and the provisioning entry point
//! (claims 000: 4, 10, 13).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dialtone_http::{json_string, Handler, Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ids::{Contact, DeviceId};
use crate::ratelimit::RateLimiter;
use crate::registry::{Account, AuditEntry, DeviceRecord, Registry, RegistryError, Role};

/// Largest page a listing returns.
const MAX_PAGE: usize = 1000;

/// Counters of the service, rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Device inquiries answered with a contact.
    pub inquiries_found: AtomicU64,
    /// Device inquiries for an unregistered ID.
    pub inquiries_unknown: AtomicU64,
    /// Device inquiries with a malformed ID.
    pub inquiries_malformed: AtomicU64,
    /// Device inquiries refused by the per-source rate limit.
    pub inquiries_rate_limited: AtomicU64,
    /// Management requests without a valid token.
    pub auth_failures: AtomicU64,
    /// Management changes committed.
    pub changes: AtomicU64,
    /// Provisioning inquiries answered.
    pub provision_answers: AtomicU64,
}

impl Counters {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE dialtone_preprov_inquiries_total counter\n\
             dialtone_preprov_inquiries_total{{result=\"found\"}} {}\n\
             dialtone_preprov_inquiries_total{{result=\"unknown\"}} {}\n\
             dialtone_preprov_inquiries_total{{result=\"malformed\"}} {}\n\
             dialtone_preprov_inquiries_total{{result=\"rate_limited\"}} {}\n\
             # TYPE dialtone_preprov_auth_failures_total counter\n\
             dialtone_preprov_auth_failures_total {}\n\
             # TYPE dialtone_preprov_changes_total counter\n\
             dialtone_preprov_changes_total {}\n\
             # TYPE dialtone_provision_answers_total counter\n\
             dialtone_provision_answers_total {}\n",
            c(&self.inquiries_found),
            c(&self.inquiries_unknown),
            c(&self.inquiries_malformed),
            c(&self.inquiries_rate_limited),
            c(&self.auth_failures),
            c(&self.changes),
            c(&self.provision_answers),
        )
    }
}

/// SHA-256 of a bearer token: tokens are 256-bit random values, so a fast hash is enough to make
/// a stolen database useless for authentication.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random bearer token (256 bits, hex).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The pre-provisioning service.
pub struct Service {
    registry: Arc<dyn Registry>,
    admin_token_hash: Option<[u8; 32]>,
    limiter: RateLimiter,
    counters: Arc<Counters>,
    next_servers: Vec<String>,
    class_parameters: BTreeMap<String, BTreeMap<String, String>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("next_servers", &self.next_servers).finish_non_exhaustive()
    }
}

/// Settings of [`Service::new`].
#[derive(Debug, Clone, Default)]
pub struct ServiceSettings {
    /// The admin token from the configuration, if any.
    pub admin_token: Option<String>,
    /// Device inquiries per second per source.
    pub rate_per_source: u32,
    /// Burst per source.
    pub burst_per_source: u32,
    /// Servers named to devices without parameters here.
    pub next_servers: Vec<String>,
    /// Per-class parameter templates, by class name.
    pub class_parameters: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Name outside the allowed form.
    #[error("an account name is 1-64 letters, digits, '-', '_' or '.', and not `admin`")]
    Name,
    /// Default contact malformed.
    #[error("malformed default_contact: {0}")]
    Contact(crate::ids::ContactError),
    /// Name taken.
    #[error("an account of that name exists")]
    Exists,
    /// The registry failed; nothing was created.
    #[error(transparent)]
    Storage(RegistryError),
    /// No randomness for the token.
    #[error("no randomness for a token: {0}")]
    Randomness(String),
}

/// Creates an account (by `actor`, for the audit log) and returns its bearer token, which is
/// shown this once: only its hash is kept. Used by `POST /v1/accounts` and `dialtone token create`.
pub fn create_account(
    registry: &dyn Registry,
    actor: &str,
    name: &str,
    role: Role,
    default_contact: Option<&str>,
) -> Result<String, AccountError> {
    let valid_name = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "admin";
    if !valid_name {
        return Err(AccountError::Name);
    }
    let default_contact =
        default_contact.map(Contact::parse).transpose().map_err(AccountError::Contact)?.map(|c| c.to_blob());
    let token = new_token().map_err(|e| AccountError::Randomness(e.to_string()))?;
    let account = Account { name: name.to_owned(), role, token_hash: token_hash(&token), default_contact };
    let now = now_secs();
    let mut exists = false;
    registry
        .transact(&mut |txn| {
            exists = txn.account(&account.name)?.is_some();
            if exists {
                return Ok(());
            }
            txn.put_account(account.clone())?;
            txn.audit(AuditEntry {
                seq: 0,
                at: now,
                actor: actor.to_owned(),
                action: "account.create".into(),
                subject: account.name.clone(),
                owner: None,
            })
        })
        .map_err(AccountError::Storage)?;
    if exists {
        return Err(AccountError::Exists);
    }
    Ok(token)
}

/// A management request's caller.
struct Caller {
    name: String,
    role: Role,
}

type Outcome = Result<Response, Response>;

fn internal(e: &RegistryError) -> Response {
    tracing::error!(error = %e, "pre-provisioning registry failure");
    Response::error(StatusCode::INTERNAL_SERVER_ERROR, "storage failure; nothing was changed")
}

fn bad(message: &str) -> Response {
    Response::error(StatusCode::BAD_REQUEST, message)
}

fn not_found() -> Response {
    // One answer whether the device does not exist or belongs to someone else.
    Response::error(StatusCode::NOT_FOUND, "no such device")
}

fn forbidden() -> Response {
    Response::error(StatusCode::FORBIDDEN, "this account's role may not do that")
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad(&format!("malformed JSON body: {e}")))
}

fn device_json(r: &DeviceRecord) -> String {
    let contact = Contact::from_blob(&r.contact).map(|c| c.to_string()).unwrap_or_default();
    format!(
        "{{\"device_id\":{},\"contact\":{},\"entity\":{},\"created\":{},\"updated\":{}}}",
        json_string(r.id.as_str()),
        json_string(&contact),
        json_string(&r.owner),
        r.created,
        r.updated
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDevice {
    contact: Option<String>,
    entity: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    role: Role,
    default_contact: Option<String>,
}

/// One parsed row of a bulk import: `device_id,contact[,entity]`.
struct ImportRow {
    id: DeviceId,
    contact: Option<String>,
    entity: Option<String>,
}

/// Outcome of one registration (single or one CSV row).
enum Registered {
    Created,
    Updated,
}

impl Service {
    /// A service over `registry`.
    pub fn new(registry: Arc<dyn Registry>, settings: ServiceSettings) -> Self {
        Self {
            registry,
            admin_token_hash: settings.admin_token.as_deref().map(token_hash),
            limiter: RateLimiter::new(settings.rate_per_source, settings.burst_per_source),
            counters: Arc::new(Counters::default()),
            next_servers: settings.next_servers,
            class_parameters: settings.class_parameters,
        }
    }

    /// The counters, shared with `/metrics`.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The device application: `GET /v1/contact/{device_id}` (claims 000: 1, 2, 7, 8). Untrusted and
    /// unauthenticated: it reveals only the contact registered for the ID asked about.
    fn contact(&self, req: &Request, raw_id: &str) -> Response {
        if !self.limiter.allow(req.peer.ip(), Instant::now()) {
            self.counters.inquiries_rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::error(StatusCode::TOO_MANY_REQUESTS, "too many inquiries from this address");
            r.headers.push(("retry-after", "1".to_owned()));
            return r;
        }
        let Ok(id) = DeviceId::parse(raw_id) else {
            self.counters.inquiries_malformed.fetch_add(1, Ordering::Relaxed);
            return bad("malformed device ID");
        };
        let record = match self.registry.device(&id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.counters.inquiries_unknown.fetch_add(1, Ordering::Relaxed);
                return Response::error(StatusCode::NOT_FOUND, "no provisioning contact is registered for this device");
            }
            Err(e) => return internal(&e),
        };
        let Ok(contact) = Contact::from_blob(&record.contact) else {
            return internal(&RegistryError(format!("device {id}: contact blob unreadable")));
        };
        self.counters.inquiries_found.fetch_add(1, Ordering::Relaxed);
        if req.wants_text() {
            return Response::text(StatusCode::OK, format!("{contact}\n"));
        }
        let port = contact.port.map_or("null".to_owned(), |p| p.to_string());
        Response::json(
            StatusCode::OK,
            format!(
                "{{\"device_id\":{},\"contact\":{},\"host\":{},\"port\":{port}}}\n",
                json_string(id.as_str()),
                json_string(&contact.to_string()),
                json_string(&contact.host_text())
            ),
        )
    }

    fn authenticate(&self, req: &Request) -> Result<Caller, Response> {
        let token = req.bearer_token().ok_or_else(|| {
            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            Response::unauthorized()
        })?;
        let hash = token_hash(token);
        if self.admin_token_hash.is_some_and(|h| dialtone_http::constant_time_eq(&h, &hash)) {
            return Ok(Caller { name: "admin".to_owned(), role: Role::Admin });
        }
        match self.registry.account_by_token(&hash) {
            Ok(Some(a)) => Ok(Caller { name: a.name, role: a.role }),
            Ok(None) => {
                self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                Err(Response::unauthorized())
            }
            Err(e) => Err(internal(&e)),
        }
    }

    /// Registers or changes one device inside `txn`, applying the ownership rules:
    /// an entity creates or updates only its own devices, and cannot take over another's (the
    /// refusal does not name the owner); a point of sale or the admin assigns a device to a named
    /// entity (claims 000: 6, 12), transferring it if needed.
    fn register(
        txn: &mut dyn crate::registry::Txn,
        caller: &Caller,
        id: &DeviceId,
        contact: Option<&str>,
        entity: Option<&str>,
        now: u64,
    ) -> Result<Result<Registered, String>, RegistryError> {
        let owner = match (caller.role, entity) {
            (Role::Entity, None) => caller.name.clone(),
            (Role::Entity, Some(e)) if e == caller.name => caller.name.clone(),
            (Role::Entity, Some(_)) => return Ok(Err("an entity registers devices only for itself".into())),
            (Role::PointOfSale | Role::Admin, None) => {
                return Ok(Err("name the provisioning entity the device is assigned to (\"entity\")".into()))
            }
            (Role::PointOfSale | Role::Admin, Some(e)) => e.to_owned(),
        };
        let owner_account = match txn.account(&owner)? {
            Some(a) if a.role == Role::Entity => a,
            _ => return Ok(Err(format!("`{owner}` is not a provisioning entity"))),
        };
        let contact = match contact.map(Contact::parse) {
            Some(Ok(c)) => c.to_blob(),
            Some(Err(e)) => return Ok(Err(format!("malformed contact: {e}"))),
            None => match owner_account.default_contact {
                Some(blob) => blob,
                None => return Ok(Err("give a contact (the entity has no default contact)".into())),
            },
        };
        let existing = txn.device(id)?;
        let (action, created, outcome) = match &existing {
            None => ("device.create", now, Registered::Created),
            Some(r) if r.owner == owner => ("device.update", r.created, Registered::Updated),
            Some(_) if caller.role == Role::Entity => {
                return Ok(Err("this device is registered to another provisioning entity".into()))
            }
            Some(r) => ("device.transfer", r.created, Registered::Updated),
        };
        txn.put_device(DeviceRecord { id: id.clone(), contact, owner: owner.clone(), created, updated: now })?;
        txn.audit(AuditEntry {
            seq: 0,
            at: now,
            actor: caller.name.clone(),
            action: action.into(),
            subject: id.to_string(),
            owner: Some(owner),
        })?;
        Ok(Ok(outcome))
    }

    fn put_device(&self, caller: &Caller, id: &DeviceId, req: &Request) -> Outcome {
        let body: PutDevice = parse_json(&req.body)?;
        let mut result = None;
        let now = now_secs();
        self.registry
            .transact(&mut |txn| {
                result = Some(Self::register(txn, caller, id, body.contact.as_deref(), body.entity.as_deref(), now)?);
                Ok(())
            })
            .map_err(|e| internal(&e))?;
        match result {
            Some(Ok(outcome)) => {
                self.counters.changes.fetch_add(1, Ordering::Relaxed);
                let record = self.registry.device(id).map_err(|e| internal(&e))?.ok_or_else(not_found)?;
                let status = if matches!(outcome, Registered::Created) { StatusCode::CREATED } else { StatusCode::OK };
                Ok(Response::json(status, device_json(&record) + "\n"))
            }
            Some(Err(reason)) if reason.contains("another provisioning entity") => {
                Err(Response::error(StatusCode::CONFLICT, &reason))
            }
            Some(Err(reason)) => Err(bad(&reason)),
            None => Err(internal(&RegistryError("transaction did not run".into()))),
        }
    }

    /// The device as the caller may see it: entities only their own, admin all, points of sale none.
    fn visible_device(&self, caller: &Caller, id: &DeviceId) -> Result<DeviceRecord, Response> {
        let record = self.registry.device(id).map_err(|e| internal(&e))?.ok_or_else(not_found)?;
        match caller.role {
            Role::Admin => Ok(record),
            Role::Entity if record.owner == caller.name => Ok(record),
            _ => Err(not_found()),
        }
    }

    fn delete_device(&self, caller: &Caller, id: &DeviceId) -> Outcome {
        if caller.role == Role::PointOfSale {
            return Err(forbidden());
        }
        let now = now_secs();
        let mut deleted = false;
        self.registry
            .transact(&mut |txn| {
                deleted = false;
                let Some(record) = txn.device(id)? else { return Ok(()) };
                if caller.role == Role::Entity && record.owner != caller.name {
                    return Ok(());
                }
                deleted = txn.delete_device(id)?;
                txn.audit(AuditEntry {
                    seq: 0,
                    at: now,
                    actor: caller.name.clone(),
                    action: "device.delete".into(),
                    subject: id.to_string(),
                    owner: Some(record.owner),
                })
            })
            .map_err(|e| internal(&e))?;
        if deleted {
            self.counters.changes.fetch_add(1, Ordering::Relaxed);
            Ok(Response::text(StatusCode::NO_CONTENT, ""))
        } else {
            Err(not_found())
        }
    }

    fn list_devices(&self, caller: &Caller, req: &Request) -> Outcome {
        let params = req.query_params();
        let owner = match caller.role {
            Role::Entity => Some(caller.name.clone()),
            Role::Admin => params.get("entity").cloned(),
            Role::PointOfSale => return Err(forbidden()),
        };
        let after = match params.get("after") {
            Some(a) => Some(DeviceId::parse(a).map_err(|_| bad("malformed `after` device ID"))?),
            None => None,
        };
        let limit = match params.get("limit") {
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|&l| (1..=MAX_PAGE).contains(&l))
                .ok_or_else(|| bad("`limit` must be 1..=1000"))?,
            None => 100,
        };
        let page = self.registry.devices(owner.as_deref(), after.as_ref(), limit).map_err(|e| internal(&e))?;
        let next = if page.len() == limit { page.last().map(|r| json_string(r.id.as_str())) } else { None };
        let items: Vec<String> = page.iter().map(device_json).collect();
        Ok(Response::json(
            StatusCode::OK,
            format!("{{\"devices\":[{}],\"next\":{}}}\n", items.join(","), next.unwrap_or_else(|| "null".into())),
        ))
    }

    /// Bulk registration from CSV (`device_id,contact[,entity]`), all rows in one transaction, with
    /// a result per rejected row naming its line.
    fn import(&self, caller: &Caller, req: &Request) -> Outcome {
        // Line by line, so every rejected row is named by its line in the file (comments and blank
        // lines count); each line is one CSV record, quoting allowed.
        let Ok(text) = std::str::from_utf8(&req.body) else { return Err(bad("the CSV body is not UTF-8")) };
        let now = now_secs();
        let mut rows: Vec<(usize, Result<ImportRow, String>)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .trim(csv::Trim::All)
                .from_reader(trimmed.as_bytes());
            let record = reader.records().next();
            let parsed = match record {
                None => continue,
                Some(Err(e)) => Err(format!("unreadable CSV row: {e}")),
                Some(Ok(r)) if rows.is_empty() && r.get(0).is_some_and(|f| f.eq_ignore_ascii_case("device_id")) => {
                    continue
                }
                Some(Ok(r)) if r.len() < 2 || r.len() > 3 => Err("expected device_id,contact[,entity]".to_owned()),
                Some(Ok(r)) => match DeviceId::parse(r.get(0).unwrap_or("")) {
                    Err(e) => Err(e.to_string()),
                    Ok(id) => {
                        let contact = r.get(1).filter(|c| !c.is_empty()).map(str::to_owned);
                        let entity = r.get(2).filter(|e| !e.is_empty()).map(str::to_owned);
                        Ok(ImportRow { id, contact, entity })
                    }
                },
            };
            rows.push((index + 1, parsed));
        }
        let (mut created, mut updated) = (0u64, 0u64);
        let mut rejected: Vec<String> = Vec::new();
        self.registry
            .transact(&mut |txn| {
                (created, updated) = (0, 0);
                rejected.clear();
                for (line, row) in &rows {
                    let outcome = match row {
                        Err(e) => Err(e.clone()),
                        Ok(row) => {
                            Self::register(txn, caller, &row.id, row.contact.as_deref(), row.entity.as_deref(), now)?
                        }
                    };
                    match outcome {
                        Ok(Registered::Created) => created += 1,
                        Ok(Registered::Updated) => updated += 1,
                        Err(e) => rejected.push(format!("{{\"line\":{line},\"error\":{}}}", json_string(&e))),
                    }
                }
                Ok(())
            })
            .map_err(|e| internal(&e))?;
        self.counters.changes.fetch_add(created + updated, Ordering::Relaxed);
        let status = if rejected.is_empty() { StatusCode::OK } else { StatusCode::MULTI_STATUS };
        Ok(Response::json(
            status,
            format!("{{\"created\":{created},\"updated\":{updated},\"rejected\":[{}]}}\n", rejected.join(",")),
        ))
    }

    fn export(&self, caller: &Caller) -> Outcome {
        let owner = match caller.role {
            Role::Entity => Some(caller.name.as_str()),
            Role::Admin => None,
            Role::PointOfSale => return Err(forbidden()),
        };
        let mut out = String::from("device_id,contact,entity\n");
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.registry.devices(owner, after.as_ref(), MAX_PAGE).map_err(|e| internal(&e))?;
            for r in &page {
                let contact = Contact::from_blob(&r.contact).map(|c| c.to_string()).unwrap_or_default();
                out.push_str(&format!("{},{contact},{}\n", r.id, r.owner));
            }
            match page.last() {
                Some(last) if page.len() == MAX_PAGE => after = Some(last.id.clone()),
                _ => break,
            }
        }
        let mut r = Response::text(StatusCode::OK, out);
        r.content_type = "text/csv; charset=utf-8";
        Ok(r)
    }

    fn create_account(&self, caller: &Caller, req: &Request) -> Outcome {
        if caller.role != Role::Admin {
            return Err(forbidden());
        }
        let body: NewAccount = parse_json(&req.body)?;
        let token =
            create_account(&*self.registry, &caller.name, &body.name, body.role, body.default_contact.as_deref())
                .map_err(|e| match e {
                    AccountError::Exists => Response::error(StatusCode::CONFLICT, &e.to_string()),
                    AccountError::Storage(e) => internal(&e),
                    AccountError::Randomness(_) => internal(&RegistryError(e.to_string())),
                    AccountError::Name | AccountError::Contact(_) => bad(&e.to_string()),
                })?;
        self.counters.changes.fetch_add(1, Ordering::Relaxed);
        let role = serde_json::to_string(&body.role).unwrap_or_default();
        Ok(Response::json(
            StatusCode::CREATED,
            format!("{{\"name\":{},\"role\":{role},\"token\":{}}}\n", json_string(&body.name), json_string(&token)),
        ))
    }

    fn list_accounts(&self, caller: &Caller) -> Outcome {
        if caller.role != Role::Admin {
            return Err(forbidden());
        }
        let accounts = self.registry.accounts().map_err(|e| internal(&e))?;
        let items: Vec<String> = accounts
            .iter()
            .map(|a| {
                let role = serde_json::to_string(&a.role).unwrap_or_default();
                format!("{{\"name\":{},\"role\":{role}}}", json_string(&a.name))
            })
            .collect();
        Ok(Response::json(StatusCode::OK, format!("{{\"accounts\":[{}]}}\n", items.join(","))))
    }

    fn delete_account(&self, caller: &Caller, name: &str) -> Outcome {
        if caller.role != Role::Admin {
            return Err(forbidden());
        }
        if self.registry.device_count(name).map_err(|e| internal(&e))? > 0 {
            return Err(Response::error(
                StatusCode::CONFLICT,
                "the entity still owns devices; transfer or delete them first",
            ));
        }
        let now = now_secs();
        let mut deleted = false;
        self.registry
            .transact(&mut |txn| {
                deleted = txn.delete_account(name)?;
                if deleted {
                    txn.audit(AuditEntry {
                        seq: 0,
                        at: now,
                        actor: caller.name.clone(),
                        action: "account.delete".into(),
                        subject: name.to_owned(),
                        owner: None,
                    })?;
                }
                Ok(())
            })
            .map_err(|e| internal(&e))?;
        if deleted {
            Ok(Response::text(StatusCode::NO_CONTENT, ""))
        } else {
            Err(Response::error(StatusCode::NOT_FOUND, "no such account"))
        }
    }

    fn put_parameters(&self, caller: &Caller, id: &DeviceId, req: &Request) -> Outcome {
        if caller.role == Role::PointOfSale {
            return Err(forbidden());
        }
        let parameters: BTreeMap<String, String> = parse_json(&req.body)?;
        if parameters.len() > 256 || parameters.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024) {
            return Err(bad("parameters: at most 256, names 1-64 bytes, values at most 1024 bytes"));
        }
        let record = self.visible_device(caller, id)?;
        let now = now_secs();
        self.registry
            .transact(&mut |txn| {
                txn.put_parameters(id, parameters.clone())?;
                txn.audit(AuditEntry {
                    seq: 0,
                    at: now,
                    actor: caller.name.clone(),
                    action: "device.parameters".into(),
                    subject: id.to_string(),
                    owner: Some(record.owner.clone()),
                })
            })
            .map_err(|e| internal(&e))?;
        self.counters.changes.fetch_add(1, Ordering::Relaxed);
        Ok(Response::json(StatusCode::OK, serde_json::to_string(&parameters).unwrap_or_default() + "\n"))
    }

    fn audit(&self, caller: &Caller, req: &Request) -> Outcome {
        let params = req.query_params();
        let after = params.get("after").and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
        let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).clamp(1, MAX_PAGE);
        let owner = match caller.role {
            Role::Admin => None,
            Role::Entity => Some(caller.name.as_str()),
            Role::PointOfSale => return Err(forbidden()),
        };
        let entries = self.registry.audit_log(after, limit, owner).map_err(|e| internal(&e))?;
        Ok(Response::json(
            StatusCode::OK,
            format!("{{\"entries\":{}}}\n", serde_json::to_string(&entries).unwrap_or_default()),
        ))
    }

    fn management(&self, req: &Request, segments: &[&str]) -> Outcome {
        let caller = self.authenticate(req)?;
        let device = |raw: &str| DeviceId::parse(raw).map_err(|e| bad(&e.to_string()));
        match (&req.method, segments) {
            (&Method::GET, ["devices"]) => self.list_devices(&caller, req),
            (&Method::GET, ["devices", id]) => {
                let record = self.visible_device(&caller, &device(id)?)?;
                Ok(Response::json(StatusCode::OK, device_json(&record) + "\n"))
            }
            (&Method::PUT, ["devices", id]) => self.put_device(&caller, &device(id)?, req),
            (&Method::DELETE, ["devices", id]) => self.delete_device(&caller, &device(id)?),
            (&Method::GET, ["devices", id, "parameters"]) => {
                let id = device(id)?;
                self.visible_device(&caller, &id)?;
                let params = self.registry.parameters(&id).map_err(|e| internal(&e))?.unwrap_or_default();
                Ok(Response::json(StatusCode::OK, serde_json::to_string(&params).unwrap_or_default() + "\n"))
            }
            (&Method::PUT, ["devices", id, "parameters"]) => self.put_parameters(&caller, &device(id)?, req),
            (&Method::POST, ["bulk", "devices"]) => self.import(&caller, req),
            (&Method::GET, ["bulk", "devices"]) => self.export(&caller),
            (&Method::GET, ["accounts"]) => self.list_accounts(&caller),
            (&Method::POST, ["accounts"]) => self.create_account(&caller, req),
            (&Method::DELETE, ["accounts", name]) => self.delete_account(&caller, name),
            (&Method::GET, ["audit"]) => self.audit(&caller, req),
            _ => Err(Response::error(StatusCode::NOT_FOUND, "no such resource")),
        }
    }

    /// The provisioning entry point (claims 000: 4, 10, 13): a registered device's telephony
    /// configuration parameters (its class template merged with its own values), or the
    /// provisioning servers to ask next.
    pub fn provision(&self, raw_id: &str) -> Response {
        let Ok(id) = DeviceId::parse(raw_id) else { return bad("malformed device ID") };
        let own = match self.registry.parameters(&id) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => return internal(&e),
        };
        if own.is_empty() {
            if self.next_servers.is_empty() {
                return Response::error(StatusCode::NOT_FOUND, "no provisioning parameters for this device");
            }
            self.counters.provision_answers.fetch_add(1, Ordering::Relaxed);
            let servers: Vec<String> = self.next_servers.iter().map(|s| json_string(s)).collect();
            return Response::json(
                StatusCode::OK,
                format!("{{\"device_id\":{},\"next_servers\":[{}]}}\n", json_string(id.as_str()), servers.join(",")),
            );
        }
        let mut merged = own.get("class").and_then(|c| self.class_parameters.get(c)).cloned().unwrap_or_default();
        merged.extend(own);
        self.counters.provision_answers.fetch_add(1, Ordering::Relaxed);
        Response::json(
            StatusCode::OK,
            format!(
                "{{\"device_id\":{},\"parameters\":{}}}\n",
                json_string(id.as_str()),
                serde_json::to_string(&merged).unwrap_or_default()
            ),
        )
    }
}

impl Handler for Service {
    fn handle(&self, req: &Request) -> Response {
        let segments = req.segments();
        let answer = match (&req.method, segments.as_slice()) {
            (&Method::GET, ["v1", "contact", id]) => Ok(self.contact(req, id)),
            (&Method::GET, ["v1", "provision", id]) => Ok(self.provision(id)),
            (&Method::GET, ["metrics"]) => Ok(Response::text(StatusCode::OK, self.counters.render())),
            (_, ["v1", rest @ ..]) => self.management(req, rest),
            _ => Err(Response::error(StatusCode::NOT_FOUND, "no such resource")),
        };
        answer.unwrap_or_else(|refusal| refusal)
    }
}
