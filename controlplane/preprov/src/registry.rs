//! The look-up table and the accounts that manage it, behind a transactional trait so the durable
//! store and the in-memory test double behave the same.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::ids::DeviceId;

/// Who an account is (claims 000: 5, 6, 11, 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manages accounts and every device.
    Admin,
    /// A provisioning entity: manages only its own devices.
    Entity,
    /// A point-of-sale system: assigns the devices it sells to a named entity.
    PointOfSale,
}

/// An account of the management application. Its token is kept only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Unique name (an entity's name is what a point of sale assigns devices to).
    pub name: String,
    /// Role.
    pub role: Role,
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// An entity's own provisioning contact, used when a point of sale assigns a device without one.
    pub default_contact: Option<Vec<u8>>,
}

/// One row of the look-up table (claims 000: 3, 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Key.
    pub id: DeviceId,
    /// The provisioning contact as a binary object ([`crate::ids::Contact::to_blob`]).
    pub contact: Vec<u8>,
    /// Owning provisioning entity (account name).
    pub owner: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Last change, Unix seconds.
    pub updated: u64,
}

/// One audit-log line: every change, who made it, when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Sequence number, assigned by the registry.
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// Account that made the change.
    pub actor: String,
    /// What was done (`device.create`, `device.transfer`, `account.create`, …).
    pub action: String,
    /// The device or account changed.
    pub subject: String,
    /// The owning entity after the change (for devices), so an entity can be shown its own lines.
    pub owner: Option<String>,
}

/// A storage failure (never a refusal: refusals are decided by the service).
#[derive(Debug, thiserror::Error)]
#[error("registry storage failed: {0}")]
pub struct RegistryError(pub String);

/// Reads and writes inside one atomic, durable transaction.
pub trait Txn {
    /// A device, including writes made earlier in this transaction.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError>;
    /// Inserts or replaces a device.
    fn put_device(&mut self, record: DeviceRecord) -> Result<(), RegistryError>;
    /// Removes a device; false when absent.
    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, RegistryError>;
    /// Replaces a device's provisioning parameters (empty map removes them).
    fn put_parameters(&mut self, id: &DeviceId, parameters: BTreeMap<String, String>) -> Result<(), RegistryError>;
    /// An account by name.
    fn account(&self, name: &str) -> Result<Option<Account>, RegistryError>;
    /// Inserts or replaces an account.
    fn put_account(&mut self, account: Account) -> Result<(), RegistryError>;
    /// Removes an account; false when absent.
    fn delete_account(&mut self, name: &str) -> Result<bool, RegistryError>;
    /// Appends to the audit log (the sequence number is assigned at commit).
    fn audit(&mut self, entry: AuditEntry) -> Result<(), RegistryError>;
}

/// The durable side of the service. Implementations make a transaction durable before
/// [`Registry::transact`] returns, so nothing acknowledged is lost.
pub trait Registry: Send + Sync + 'static {
    /// Runs `work` atomically: all of its writes, or none when it returns an error.
    fn transact(&self, work: &mut dyn FnMut(&mut dyn Txn) -> Result<(), RegistryError>) -> Result<(), RegistryError>;
    /// One device.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError>;
    /// Devices of `owner` (all devices when `None`) after `after`, in key order, at most `limit`.
    fn devices(
        &self,
        owner: Option<&str>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError>;
    /// Number of devices owned by `owner`.
    fn device_count(&self, owner: &str) -> Result<u64, RegistryError>;
    /// A device's provisioning parameters.
    fn parameters(&self, id: &DeviceId) -> Result<Option<BTreeMap<String, String>>, RegistryError>;
    /// The account holding this token hash.
    fn account_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Account>, RegistryError>;
    /// All accounts, by name.
    fn accounts(&self) -> Result<Vec<Account>, RegistryError>;
    /// Audit lines after `after` (sequence), at most `limit`, optionally only those of one owner.
    fn audit_log(&self, after: u64, limit: usize, owner: Option<&str>) -> Result<Vec<AuditEntry>, RegistryError>;
}

/// The in-memory registry: the reference behaviour, and the one unit tests use.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default, Clone)]
struct MemoryState {
    devices: BTreeMap<DeviceId, DeviceRecord>,
    parameters: BTreeMap<DeviceId, BTreeMap<String, String>>,
    accounts: BTreeMap<String, Account>,
    audit: Vec<AuditEntry>,
}

impl MemoryRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave half a transaction: writes go to a copy.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct MemoryTxn {
    state: MemoryState,
}

impl Txn for MemoryTxn {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        Ok(self.state.devices.get(id).cloned())
    }
    fn put_device(&mut self, record: DeviceRecord) -> Result<(), RegistryError> {
        self.state.devices.insert(record.id.clone(), record);
        Ok(())
    }
    fn delete_device(&mut self, id: &DeviceId) -> Result<bool, RegistryError> {
        self.state.parameters.remove(id);
        Ok(self.state.devices.remove(id).is_some())
    }
    fn put_parameters(&mut self, id: &DeviceId, parameters: BTreeMap<String, String>) -> Result<(), RegistryError> {
        if parameters.is_empty() {
            self.state.parameters.remove(id);
        } else {
            self.state.parameters.insert(id.clone(), parameters);
        }
        Ok(())
    }
    fn account(&self, name: &str) -> Result<Option<Account>, RegistryError> {
        Ok(self.state.accounts.get(name).cloned())
    }
    fn put_account(&mut self, account: Account) -> Result<(), RegistryError> {
        self.state.accounts.insert(account.name.clone(), account);
        Ok(())
    }
    fn delete_account(&mut self, name: &str) -> Result<bool, RegistryError> {
        Ok(self.state.accounts.remove(name).is_some())
    }
    fn audit(&mut self, mut entry: AuditEntry) -> Result<(), RegistryError> {
        entry.seq = self.state.audit.last().map_or(1, |e| e.seq + 1);
        self.state.audit.push(entry);
        Ok(())
    }
}

impl Registry for MemoryRegistry {
    fn transact(&self, work: &mut dyn FnMut(&mut dyn Txn) -> Result<(), RegistryError>) -> Result<(), RegistryError> {
        let mut guard = self.lock();
        let mut txn = MemoryTxn { state: guard.clone() };
        work(&mut txn)?;
        *guard = txn.state;
        Ok(())
    }
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, RegistryError> {
        Ok(self.lock().devices.get(id).cloned())
    }
    fn devices(
        &self,
        owner: Option<&str>,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError> {
        let state = self.lock();
        let range = match after {
            Some(a) => state.devices.range((std::ops::Bound::Excluded(a.clone()), std::ops::Bound::Unbounded)),
            None => state.devices.range(..),
        };
        Ok(range.map(|(_, r)| r).filter(|r| owner.is_none_or(|o| r.owner == o)).take(limit).cloned().collect())
    }
    fn device_count(&self, owner: &str) -> Result<u64, RegistryError> {
        Ok(self.lock().devices.values().filter(|r| r.owner == owner).count() as u64)
    }
    fn parameters(&self, id: &DeviceId) -> Result<Option<BTreeMap<String, String>>, RegistryError> {
        Ok(self.lock().parameters.get(id).cloned())
    }
    fn account_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<Account>, RegistryError> {
        Ok(self.lock().accounts.values().find(|a| dialtone_http::constant_time_eq(&a.token_hash, token_hash)).cloned())
    }
    fn accounts(&self) -> Result<Vec<Account>, RegistryError> {
        Ok(self.lock().accounts.values().cloned().collect())
    }
    fn audit_log(&self, after: u64, limit: usize, owner: Option<&str>) -> Result<Vec<AuditEntry>, RegistryError> {
        Ok(self
            .lock()
            .audit
            .iter()
            .filter(|e| e.seq > after && owner.is_none_or(|o| e.owner.as_deref() == Some(o)))
            .take(limit)
            .cloned()
            .collect())
    }
}
