//! API key management: make, list and revoke keys. Admin only; an admin key with a prefix
//! manages only keys inside its prefix.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};

use super::ServiceError;
use super::contexts::admit;
use crate::auth::keys::ApiKey;
use crate::auth::new_key_id;
use crate::domain::{ContextId, Principal, Role};
use crate::store::{ApiKeyRecord, KeyStore};

/// Longest key name.
const MAX_NAME: usize = 255;

/// What is told of a key made or revoked.
type KeyHook = Box<dyn Fn(&ApiKeyRecord) + Send + Sync>;

pub struct KeyService {
    store: Arc<dyn KeyStore>,
    /// Told of each key made or revoked here, before it is answered, so that this instance
    /// takes it (or stops taking it) at once; the others hear of it through the commit signal.
    changed: Option<KeyHook>,
}

/// A key just made: the record, and the key itself, shown this once.
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub key: ApiKey,
}

impl KeyService {
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Self {
            store,
            changed: None,
        }
    }

    /// Calls `hook` with each key made or revoked (the server's auth layer applies it).
    pub fn on_change(mut self, hook: impl Fn(&ApiKeyRecord) + Send + Sync + 'static) -> Self {
        self.changed = Some(Box::new(hook));
        self
    }

    /// A new key with `role`, seeing only ids under `prefix` when given.
    pub async fn create(
        &self,
        who: &Principal,
        name: &str,
        role: Role,
        prefix: Option<&str>,
    ) -> Result<CreatedKey, ServiceError> {
        admit(who, Role::Admin, None)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.contains('\0') {
            return Err(ServiceError::Invalid(format!(
                "name must be 1 to {MAX_NAME} characters"
            )));
        }
        let prefix = match prefix {
            None => None,
            Some(raw) => Some(
                ContextId::parse(raw)
                    .map_err(|e| ServiceError::Invalid(format!("prefix: {e}")))?
                    .as_str()
                    .to_owned(),
            ),
        };
        // A key can never see more than the key that made it.
        if let Some(own) = &who.prefix
            && !prefix.as_deref().is_some_and(|p| p.starts_with(&**own))
        {
            return Err(ServiceError::NotPermitted(format!(
                "this key may only make keys whose prefix starts with {own:?}"
            )));
        }
        let key = ApiKey::generate().map_err(ServiceError::Internal)?;
        let record = ApiKeyRecord {
            id: new_key_id(),
            name: name.to_owned(),
            role,
            prefix,
            key_hash: key.hash(),
            created_at: Utc::now().trunc_subsecs(6),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_key(&record).await?;
        if let Some(hook) = &self.changed {
            hook(&record);
        }
        tracing::info!(key.id = %record.id, role = role.as_str(), "API key created");
        Ok(CreatedKey { record, key })
    }

    /// Every key the caller manages, revoked ones included, oldest first.
    pub async fn list(&self, who: &Principal) -> Result<Vec<ApiKeyRecord>, ServiceError> {
        admit(who, Role::Admin, None)?;
        let mut keys = self.store.keys().await?;
        keys.retain(|k| manages(who, k));
        Ok(keys)
    }

    /// Revokes a key; it stops working on every instance within a second.
    pub async fn revoke(&self, who: &Principal, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        admit(who, Role::Admin, None)?;
        let not_found = || ServiceError::NotFound(format!("no API key {id:?}"));
        // Check before revoking: a key outside the caller's prefix does not exist for it.
        let visible = self
            .store
            .keys()
            .await?
            .into_iter()
            .any(|k| k.id == id && manages(who, &k));
        if !visible {
            return Err(not_found());
        }
        let record = self
            .store
            .revoke_key(id, Utc::now().trunc_subsecs(6))
            .await?
            .ok_or_else(not_found)?;
        if let Some(hook) = &self.changed {
            hook(&record);
        }
        tracing::info!(key.id = %record.id, "API key revoked");
        Ok(record)
    }
}

/// Whether `who` manages `key`: its prefix, if any, must start with `who`'s.
fn manages(who: &Principal, key: &ApiKeyRecord) -> bool {
    match &who.prefix {
        None => true,
        Some(own) => key.prefix.as_deref().is_some_and(|p| p.starts_with(&**own)),
    }
}
