//! The server's registry of secrets: one record per secret, kept in Vault KV under
//! `<kv-mount>/data/_registry/secrets/<id>`, with an index per owner under
//! `<kv-mount>/data/_registry/owners/<sha256(owner)>/<id>`.
//!
//! Keeping the registry in Vault makes the server stateless: a restart, or a second replica,
//! loses nothing. Records are created with check-and-set 0 (never overwrite) and updated with
//! check-and-set of the version read, so concurrent changes to one secret cannot silently
//! overwrite each other; every registration gets a fresh random ID, so concurrent registrations
//! never touch the same record.

use std::collections::BTreeSet;

use hpcs_core::api::{ArtefactKind, Readers, SecretInfo, SecretState, VaultLocation};
use hpcs_core::ids::{ArtefactName, GroupName, NodeName, RoleName, SecretId, SpiffeId, UserName};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Schema version of [`SecretRecord`].
pub const RECORD_SCHEMA: u32 = 1;

/// Who a SPIRE entry admits on its node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// A user, selector `unix:user:<name>`.
    User(UserName),
    /// A group, selector `unix:supplementary_group:<name>`.
    Group(GroupName),
}

impl Principal {
    /// Every principal that `readers` names.
    pub fn all(readers: &Readers) -> impl Iterator<Item = Principal> + '_ {
        readers
            .users
            .iter()
            .cloned()
            .map(Principal::User)
            .chain(readers.groups.iter().cloned().map(Principal::Group))
    }
}

/// One SPIRE registration entry the server created for a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// The node whose agent is the entry's parent.
    pub node: NodeName,
    /// Who it admits.
    pub principal: Principal,
    /// SPIRE's entry ID.
    pub entry_id: String,
}

/// Everything the server knows about one secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// [`RECORD_SCHEMA`].
    pub schema: u32,
    /// Secret ID.
    pub id: SecretId,
    /// Image or data.
    pub kind: ArtefactKind,
    /// Artefact name.
    pub name: ArtefactName,
    /// Client SPIFFE ID of the owner.
    pub owner: SpiffeId,
    /// Readers.
    pub readers: Readers,
    /// Compute nodes.
    pub compute_nodes: BTreeSet<NodeName>,
    /// Reader SPIFFE ID.
    pub reader_id: SpiffeId,
    /// Vault jwt role of readers.
    pub role: RoleName,
    /// Vault read policy.
    pub read_policy: RoleName,
    /// Vault write-once policy.
    pub write_policy: RoleName,
    /// The SPIRE entries, one per (node, principal).
    pub entries: Vec<EntryRef>,
    /// Life-cycle state.
    pub state: SecretState,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expiry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Vault coordinates the API reports with each secret.
#[derive(Clone, Debug)]
pub struct VaultCoordinates {
    /// KV mount.
    pub kv_mount: String,
    /// jwt auth mount.
    pub auth_mount: String,
    /// Reader audience.
    pub audience: String,
}

impl SecretRecord {
    /// The API view of this record.
    #[must_use]
    pub fn to_info(&self, vault: &VaultCoordinates) -> SecretInfo {
        SecretInfo {
            id: self.id.clone(),
            kind: self.kind,
            name: self.name.clone(),
            owner: self.owner.clone(),
            readers: self.readers.clone(),
            compute_nodes: self.compute_nodes.clone(),
            reader_id: self.reader_id.clone(),
            vault: VaultLocation {
                kv_mount: vault.kv_mount.clone(),
                kv_path: self.id.to_string(),
                role: self.role.clone(),
                auth_mount: vault.auth_mount.clone(),
                audience: vault.audience.clone(),
            },
            state: self.state,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    /// Whether the record's expiry has passed at `now`.
    #[must_use]
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_serializes_tagged() {
        let p = Principal::Group("hpcs-users".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"group":"hpcs-users"}"#
        );
        let back: Principal = serde_json::from_str(r#"{"user":"alice"}"#).unwrap();
        assert_eq!(back, Principal::User("alice".parse().unwrap()));
    }

    #[test]
    fn all_principals_users_first() {
        let readers = Readers {
            users: ["bob".parse().unwrap(), "alice".parse().unwrap()].into(),
            groups: ["g".parse().unwrap()].into(),
        };
        let all: Vec<_> = Principal::all(&readers).collect();
        assert_eq!(
            all,
            [
                Principal::User("alice".parse().unwrap()),
                Principal::User("bob".parse().unwrap()),
                Principal::Group("g".parse().unwrap()),
            ]
        );
    }
}
