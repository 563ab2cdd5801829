//! The durable [`Registry`] on redb: every transaction is committed with `Durability::Immediate`
//! (fsync) before [`Registry::transact`] returns.
//!
//! Tables (keys and values are bytes so the layout is explicit):
//!
//! ```text
//! preprov_devices   device id            -> owner_len u8 | owner | created u64 | updated u64 | contact blob
//! preprov_by_owner  owner 0x00 device id -> ()        (listing an entity's devices in key order)
//! preprov_params    device id            -> JSON object of parameters
//! preprov_accounts  name                 -> role u8 | token hash [32] | default contact blob (may be empty)
//! preprov_tokens    token hash [32]      -> name
//! preprov_audit     sequence u64         -> JSON audit entry
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use crate::ids::DeviceId;
use crate::registry::{Account, AuditEntry, DeviceRecord, Registry, RegistryError, Role, Txn};

const DEVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("preprov_devices");
const BY_OWNER: TableDefinition<'_, &[u8], ()> = TableDefinition::new("preprov_by_owner");
const PARAMS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("preprov_params");
const ACCOUNTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("preprov_accounts");
const TOKENS: TableDefinition<'_, &[u8], &str> = TableDefinition::new("preprov_tokens");
const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("preprov_audit");

fn err(e: impl std::fmt::Display) -> RegistryError {
    RegistryError(e.to_string())
}

fn corrupt(table: &str) -> RegistryError {
    RegistryError(format!("a record in {table} does not decode"))
}

fn encode_device(r: &DeviceRecord) -> Vec<u8> {
    let owner = r.owner.as_bytes();
    let mut v = Vec::with_capacity(1 + owner.len() + 16 + r.contact.len());
    v.push(u8::try_from(owner.len()).unwrap_or(u8::MAX));
    v.extend_from_slice(&owner[..owner.len().min(255)]);
    v.extend_from_slice(&r.created.to_be_bytes());
    v.extend_from_slice(&r.updated.to_be_bytes());
    v.extend_from_slice(&r.contact);
    v
}

fn decode_device(id: &str, v: &[u8]) -> Option<DeviceRecord> {
    let (&len, rest) = v.split_first()?;
    let owner = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?.to_owned();
    let rest = rest.get(usize::from(len)..)?;
    let created = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let updated = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
    Some(DeviceRecord { id: DeviceId::parse(id).ok()?, contact: rest.get(16..)?.to_vec(), owner, created, updated })
}

fn owner_key(owner: &str, id: &str) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Admin => 0,
        Role::Entity => 1,
        Role::PointOfSale => 2,
    }
}

fn encode_account(a: &Account) -> Vec<u8> {
    let mut v = vec![role_byte(a.role)];
    v.extend_from_slice(&a.token_hash);
    v.extend_from_slice(a.default_contact.as_deref().unwrap_or(&[]));
    v
}

fn decode_account(name: &str, v: &[u8]) -> Option<Account> {
    let role = match v.first()? {
        0 => Role::Admin,
        1 => Role::Entity,
        2 => Role::PointOfSale,
        _ => return None,
    };
    let token_hash: [u8; 32] = v.get(1..33)?.try_into().ok()?;
    let contact = v.get(33..)?;
    Some(Account {
        name: name.to_owned(),
        role,
        token_hash,
        default_contact: (!contact.is_empty()).then(|| contact.to_vec()),
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAudit {
    at: u64,
    actor: String,
    action: String,
    subject: String,
    owner: Option<String>,
}

/// The registry in a redb database (which it may share with the lease store).
pub struct RedbRegistry {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbRegistry").finish_non_exhaustive()
    }
}

impl RedbRegistry {
    /// Uses an open database, creating the registry's tables if needed.
    pub fn new(db: Arc<Database>) -> Result<Self, RegistryError> {
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            txn.open_table(DEVICES).map_err(err)?;
            txn.open_table(BY_OWNER).map_err(err)?;
            txn.open_table(PARAMS).map_err(err)?;
            txn.open_table(ACCOUNTS).map_err(err)?;
            txn.open_table(TOKENS).map_err(err)?;
            txn.open_table(AUDIT).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Opens (or creates) a database file of its own.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        Self::new(Arc::new(Database::create(path).map_err(err)?))
    }
}

struct RedbTxn<'a> {
    txn: &'a WriteTransaction,
}

impl Txn for RedbTxn<'_> {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        let table = self.txn.open_table(DEVICES).map_err(err)?;
        let found = table.get(id.as_str()).map_err(err)?;
        found.map(|v| decode_device(id.as_str(), v.value()).ok_or_else(|| corrupt("preprov_devices"))).transpose()
    }

    fn put_device(&mut self, record: DeviceRecord) -> Result<(), RegistryError> {
        let previous = self.device(&record.id)?;
        let mut by_owner = self.txn.open_table(BY_OWNER).map_err(err)?;
        if let Some(prev) = previous.filter(|p| p.owner != record.owner) {
            by_owner.remove(owner_key(&prev.owner, prev.id.as_str()).as_slice()).map_err(err)?;
        }
        by_owner.insert(owner_key(&record.owner, record.id.as_str()).as_slice(), ()).map_err(err)?;
        let mut devices = self.txn.open_table(DEVICES).map_err(err)?;
        devices.insert(record.id.as_str(), encode_device(&record).as_slice()).map_err(err)?;
        Ok(())
    }

    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, RegistryError> {
        let Some(prev) = self.device(id)? else { return Ok(false) };
        self.txn
            .open_table(BY_OWNER)
            .map_err(err)?
            .remove(owner_key(&prev.owner, id.as_str()).as_slice())
            .map_err(err)?;
        self.txn.open_table(PARAMS).map_err(err)?.remove(id.as_str()).map_err(err)?;
        self.txn.open_table(DEVICES).map_err(err)?.remove(id.as_str()).map_err(err)?;
        Ok(true)
    }

    fn put_parameters(&mut self, id: &DeviceId, parameters: BTreeMap<String, String>) -> Result<(), RegistryError> {
        let mut table = self.txn.open_table(PARAMS).map_err(err)?;
        if parameters.is_empty() {
            table.remove(id.as_str()).map_err(err)?;
        } else {
            let json = serde_json::to_vec(&parameters).map_err(err)?;
            table.insert(id.as_str(), json.as_slice()).map_err(err)?;
        }
        Ok(())
    }

    fn account(&self, name: &str) -> Result<Option<Account>, RegistryError> {
        let table = self.txn.open_table(ACCOUNTS).map_err(err)?;
        let found = table.get(name).map_err(err)?;
        found.map(|v| decode_account(name, v.value()).ok_or_else(|| corrupt("preprov_accounts"))).transpose()
    }

    fn put_account(&mut self, account: Account) -> Result<(), RegistryError> {
        if let Some(prev) = self.account(&account.name)? {
            self.txn.open_table(TOKENS).map_err(err)?.remove(prev.token_hash.as_slice()).map_err(err)?;
        }
        self.txn
            .open_table(TOKENS)
            .map_err(err)?
            .insert(account.token_hash.as_slice(), account.name.as_str())
            .map_err(err)?;
        self.txn
            .open_table(ACCOUNTS)
            .map_err(err)?
            .insert(account.name.as_str(), encode_account(&account).as_slice())
            .map_err(err)?;
        Ok(())
    }

    fn delete_account(&mut self, name: &str) -> Result<bool, RegistryError> {
        let Some(prev) = self.account(name)? else { return Ok(false) };
        self.txn.open_table(TOKENS).map_err(err)?.remove(prev.token_hash.as_slice()).map_err(err)?;
        self.txn.open_table(ACCOUNTS).map_err(err)?.remove(name).map_err(err)?;
        Ok(true)
    }

    fn audit(&mut self, entry: AuditEntry) -> Result<(), RegistryError> {
        let mut table = self.txn.open_table(AUDIT).map_err(err)?;
        let seq = table.last().map_err(err)?.map_or(1, |(k, _)| k.value() + 1);
        let stored = StoredAudit {
            at: entry.at,
            actor: entry.actor,
            action: entry.action,
            subject: entry.subject,
            owner: entry.owner,
        };
        table.insert(seq, serde_json::to_vec(&stored).map_err(err)?.as_slice()).map_err(err)?;
        Ok(())
    }
}

impl Registry for RedbRegistry {
    fn transact(&self, work: &mut dyn FnMut(&mut dyn Txn) -> Result<(), RegistryError>) -> Result<(), RegistryError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        let outcome = work(&mut RedbTxn { txn: &txn });
        match outcome {
            Ok(()) => txn.commit().map_err(err),
            Err(e) => {
                txn.abort().map_err(err)?;
                Err(e)
            }
        }
    }

    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DEVICES).map_err(err)?;
        let found = table.get(id.as_str()).map_err(err)?;
        found.map(|v| decode_device(id.as_str(), v.value()).ok_or_else(|| corrupt("preprov_devices"))).transpose()
    }

    fn devices(
        &self,
        owner: Option<&str>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let devices = txn.open_table(DEVICES).map_err(err)?;
        let mut out = Vec::new();
        match owner {
            None => {
                let start = after.map_or("", DeviceId::as_str);
                for entry in devices.range(start..).map_err(err)? {
                    let (k, v) = entry.map_err(err)?;
                    if after.is_some_and(|a| a.as_str() == k.value()) {
                        continue;
                    }
                    out.push(decode_device(k.value(), v.value()).ok_or_else(|| corrupt("preprov_devices"))?);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Some(owner) => {
                let by_owner = txn.open_table(BY_OWNER).map_err(err)?;
                let start = owner_key(owner, after.map_or("", DeviceId::as_str));
                let mut end = owner.as_bytes().to_vec();
                end.push(1);
                for entry in by_owner.range(start.as_slice()..end.as_slice()).map_err(err)? {
                    let (k, _) = entry.map_err(err)?;
                    let id = std::str::from_utf8(k.value().get(owner.len() + 1..).unwrap_or(&[]))
                        .map_err(|_| corrupt("preprov_by_owner"))?;
                    if after.is_some_and(|a| a.as_str() == id) {
                        continue;
                    }
                    let v = devices.get(id).map_err(err)?.ok_or_else(|| corrupt("preprov_by_owner"))?;
                    out.push(decode_device(id, v.value()).ok_or_else(|| corrupt("preprov_devices"))?);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn device_count(&self, owner: &str) -> Result<u64, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let by_owner = txn.open_table(BY_OWNER).map_err(err)?;
        let start = owner_key(owner, "");
        let mut end = owner.as_bytes().to_vec();
        end.push(1);
        let mut n = 0;
        for entry in by_owner.range(start.as_slice()..end.as_slice()).map_err(err)? {
            entry.map_err(err)?;
            n += 1;
        }
        Ok(n)
    }

    fn parameters(&self, id: &DeviceId) -> Result<Option<BTreeMap<String, String>>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(PARAMS).map_err(err)?;
        let found = table.get(id.as_str()).map_err(err)?;
        found.map(|v| serde_json::from_slice(v.value()).map_err(|_| corrupt("preprov_params"))).transpose()
    }

    fn account_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Account>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let tokens = txn.open_table(TOKENS).map_err(err)?;
        let Some(name) = tokens.get(token_hash.as_slice()).map_err(err)? else { return Ok(None) };
        let accounts = txn.open_table(ACCOUNTS).map_err(err)?;
        let found = accounts.get(name.value()).map_err(err)?;
        found.map(|v| decode_account(name.value(), v.value()).ok_or_else(|| corrupt("preprov_accounts"))).transpose()
    }

    fn accounts(&self) -> Result<Vec<Account>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ACCOUNTS).map_err(err)?;
        let mut out = Vec::with_capacity(usize::try_from(table.len().map_err(err)?).unwrap_or(0));
        for entry in table.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            out.push(decode_account(k.value(), v.value()).ok_or_else(|| corrupt("preprov_accounts"))?);
        }
        Ok(out)
    }

    fn audit_log(&self, after: u64, limit: usize, owner: Option<&str>) -> Result<Vec<AuditEntry>, RegistryError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(AUDIT).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let s: StoredAudit = serde_json::from_slice(v.value()).map_err(|_| corrupt("preprov_audit"))?;
            if owner.is_some_and(|o| s.owner.as_deref() != Some(o)) {
                continue;
            }
            out.push(AuditEntry {
                seq: k.value(),
                at: s.at,
                actor: s.actor,
                action: s.action,
                subject: s.subject,
                owner: s.owner,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
