//! Who may use the API: roles and bearer tokens.
//!
//! A token is `falak-token-v1.<id>.<secret>`: `id` (16 hex characters) names the token in the
//! ledger, lists and revocations; `secret` (64 hex characters, 256 random bits) proves
//! possession. The ledger stores only [`TokenHash`] — a BLAKE3 keyed hash of the secret — so
//! neither a replica's disk, a snapshot nor an API answer ever holds a usable token.
//!
//! **Invariant:** a request is allowed only when its token's record exists, is not revoked, has
//! not expired at `now`, its hash matches, and its role is among the roles the route allows.
//! [`TokenRecord::check`] is that decision, pure and clock-free.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// What a token may do. Each API route lists the roles it allows (`falak-api`'s route table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including tokens, node admission and revocation.
    Admin,
    /// Apply capsules, submit and cancel jobs, deploy functions, invoke them; read everything.
    Deploy,
    /// Invoke functions (the gateway and asynchronous invocations) and read their results.
    Invoke,
    /// Read state, logs, events and metrics; change nothing.
    Read,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Deploy, Role::Invoke, Role::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deploy => "deploy",
            Role::Invoke => "invoke",
            Role::Read => "read",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role; use admin, deploy, invoke or read"))
    }
}

/// The public half of a token: names it in the ledger. 8 random bytes, 16 hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TokenId(pub [u8; 8]);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for TokenId {
    type Err = String;

    fn from_str(s: &str) -> Result<TokenId, String> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(s, &mut id).map_err(|_| format!("{s:?} is not a token id (16 hex characters)"))?;
        Ok(TokenId(id))
    }
}

impl Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The BLAKE3 keyed hash of a token's secret, as the ledger keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of `secret`. Keyed by a fixed context so these hashes are useless elsewhere.
    pub fn of(secret: &[u8; 32]) -> TokenHash {
        let key = blake3::derive_key("falak api token v1", b"");
        TokenHash(*blake3::keyed_hash(&key, secret).as_bytes())
    }

    /// Constant-time comparison (through `blake3::Hash`'s `PartialEq`).
    fn matches(&self, other: &TokenHash) -> bool {
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(serde::de::Error::custom)?;
        Ok(TokenHash(hash))
    }
}

/// The prefix of every bearer token.
pub const TOKEN_PREFIX: &str = "falak-token-v1.";

/// A whole bearer token, as the client holds it. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub secret: [u8; 32],
}

impl Token {
    /// A token from 40 random bytes (the caller draws them: this crate has no randomness).
    pub fn from_random(random: [u8; 40]) -> Token {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        id.copy_from_slice(&random[..8]);
        secret.copy_from_slice(&random[8..]);
        Token { id: TokenId(id), secret }
    }

    /// The text the client sends: `falak-token-v1.<id>.<secret>`.
    pub fn encode(&self) -> String {
        format!("{TOKEN_PREFIX}{}.{}", self.id, hex::encode(self.secret))
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.secret)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret hidden)", self.id)
    }
}

/// Why a bearer token's text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bearer token is malformed ({0}); a Falak token looks like falak-token-v1.<16 hex>.<64 hex>")]
pub struct MalformedToken(&'static str);

impl FromStr for Token {
    type Err = MalformedToken;

    fn from_str(text: &str) -> Result<Token, MalformedToken> {
        let body = text.trim().strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken("wrong prefix"))?;
        let (id, secret) = body.split_once('.').ok_or(MalformedToken("no secret part"))?;
        let id: TokenId = id.parse().map_err(|_| MalformedToken("bad id"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(secret, &mut bytes).map_err(|_| MalformedToken("bad secret"))?;
        Ok(Token { id, secret: bytes })
    }
}

/// A token as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    /// What it is for, e.g. `ci-deployer`; shown in lists.
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
    pub created_at: Millis,
    /// Refused from this moment on; `None`: no expiry.
    pub expires_at: Option<Millis>,
    /// Requests per second one node accepts with this token (burst twice that); `None`: the
    /// node's default.
    pub rate_limit: Option<u32>,
    /// When it was revoked; a revoked token is refused for good.
    pub revoked_at: Option<Millis>,
}

/// Why a token is refused. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("the token is not known to this mesh; ask an admin for a token (`falak token create`)")]
    Unknown,
    #[error("the token {id} was revoked; ask an admin for a new one")]
    Revoked { id: TokenId },
    #[error("the token {id} expired; ask an admin for a new one")]
    Expired { id: TokenId },
}

impl TokenRecord {
    /// The record of a new `token` (its hash, never its secret), not revoked.
    pub fn new(
        token: &Token,
        name: impl Into<String>,
        role: Role,
        created_at: Millis,
        expires_at: Option<Millis>,
        rate_limit: Option<u32>,
    ) -> TokenRecord {
        TokenRecord {
            id: token.id,
            name: name.into(),
            role,
            hash: token.hash(),
            created_at,
            expires_at,
            rate_limit,
            revoked_at: None,
        }
    }

    /// Whether `token` is this record's token, valid at `now`.
    pub fn check(&self, token: &Token, now: Millis) -> Result<Role, TokenRefused> {
        if self.id != token.id || !self.hash.matches(&token.hash()) {
            return Err(TokenRefused::Unknown);
        }
        if self.revoked_at.is_some() {
            return Err(TokenRefused::Revoked { id: self.id });
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(TokenRefused::Expired { id: self.id });
        }
        Ok(self.role)
    }
}

/// How long a [`HopCredential`] is accepted around the moment it was made, either way.
pub const HOP_CREDENTIAL_WINDOW_MS: Millis = 60_000;

/// What one node sends another's gateway when it forwards an invocation (the invoke proxy, an
/// asynchronous invocation's attempt): the sending node, the time, and the sending node's
/// Ed25519 signature under its node key (its id is the public key) of both and of the receiving
/// node's id. Only the holder of an admitted node's key can make one, and it is good only at the
/// node it was made for, so a node that sees one cannot replay it elsewhere; the receiver also
/// checks the sender is admitted. The API's TLS keeps it from being read on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopCredential {
    pub node: crate::NodeId,
    pub at: Millis,
    signature: [u8; 64],
}

/// Whether `signature` is `node`'s Ed25519 signature of `message`.
pub fn node_signature_valid(node: &crate::NodeId, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{ED25519, UnparsedPublicKey};
    UnparsedPublicKey::new(&ED25519, node.as_bytes()).verify(message, signature).is_ok()
}

impl HopCredential {
    /// What the sending `node` signs for `target`.
    pub fn message(node: &crate::NodeId, target: &crate::NodeId, at: Millis) -> Vec<u8> {
        let mut message = b"falak hop v3\0".to_vec();
        message.extend_from_slice(node.as_bytes());
        message.extend_from_slice(target.as_bytes());
        message.extend_from_slice(&at.to_be_bytes());
        message
    }

    /// A credential from `node`'s signature of [`HopCredential::message`] (the caller holds the
    /// key; this crate has none).
    pub fn new(node: crate::NodeId, at: Millis, signature: [u8; 64]) -> HopCredential {
        HopCredential { node, at, signature }
    }

    /// `<node hex>.<at>.<signature hex>`.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.node, self.at, hex::encode(self.signature))
    }

    /// Parse and check at node `me` at `now`; `None` for anything but a genuine, fresh one made
    /// for `me`. `admitted` is asked before the signature is checked (it is the cheaper test).
    pub fn verify(
        text: &str,
        me: &crate::NodeId,
        now: Millis,
        admitted: impl FnOnce(&crate::NodeId) -> bool,
    ) -> Option<HopCredential> {
        let mut parts = text.trim().split('.');
        let node: crate::NodeId = parts.next()?.parse().ok()?;
        let at: Millis = parts.next()?.parse().ok()?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(parts.next()?, &mut signature).ok()?;
        if parts.next().is_some() || now.abs_diff(at) > HOP_CREDENTIAL_WINDOW_MS || !admitted(&node) {
            return None;
        }
        node_signature_valid(&node, &HopCredential::message(&node, me, at), &signature).then_some(HopCredential {
            node,
            at,
            signature,
        })
    }
}

/// A join ticket as the ledger keeps it: what `falak node admit` hands out (inside a join token)
/// so a new node may join. Like an API token it is `id` + a 256-bit secret of which the ledger
/// keeps only the hash; unlike one it admits a node, a limited number of times, until it
/// expires. The join token never carries the mesh secret: the joiner receives it over the
/// node's HTTPS API once its ticket is accepted.
///
/// **Invariant:** a ticket admits at most `uses` distinct nodes, none at or after `expires_at`;
/// a node already admitted through it may repeat its join (a lost answer) before then without
/// using another. (The answering node checks that a join request is signed by the key of the
/// node it names, so only that node can repeat it.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicketRecord {
    pub id: TokenId,
    pub hash: TokenHash,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// How many nodes it may admit in all.
    pub uses: u32,
    /// The nodes it admitted, in order.
    pub joined: Vec<crate::NodeId>,
    /// When an admin revoked it; a revoked ticket admits no one.
    #[serde(default)]
    pub revoked_at: Option<Millis>,
}

/// Why a join ticket is refused. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefused {
    #[error("the join token is not known to this mesh; ask an admin for one (`falak node admit`)")]
    Unknown,
    #[error("the join token expired; ask an admin for a new one (`falak node admit`)")]
    Expired,
    #[error(
        "the join token was already used by {uses} node(s), all it allows; ask an admin for a new one (`falak node admit --uses N`)"
    )]
    UsedUp { uses: u32 },
    #[error("the join token was revoked; ask an admin for a new one (`falak node admit`)")]
    Revoked,
}

impl JoinTicketRecord {
    /// The record of a new ticket `token` (its hash, never its secret).
    pub fn new(token: &Token, created_at: Millis, expires_at: Millis, uses: u32) -> JoinTicketRecord {
        JoinTicketRecord {
            id: token.id,
            hash: token.hash(),
            created_at,
            expires_at,
            uses,
            joined: Vec::new(),
            revoked_at: None,
        }
    }

    /// Whether a ticket with `hash` may admit `node` at `now`.
    pub fn check(&self, hash: &TokenHash, node: &crate::NodeId, now: Millis) -> Result<(), TicketRefused> {
        if !self.hash.matches(hash) {
            return Err(TicketRefused::Unknown);
        }
        if self.revoked_at.is_some() {
            return Err(TicketRefused::Revoked);
        }
        if now >= self.expires_at {
            return Err(TicketRefused::Expired);
        }
        if self.joined.contains(node) {
            return Ok(());
        }
        if self.joined.len() >= self.uses as usize {
            return Err(TicketRefused::UsedUp { uses: self.uses });
        }
        Ok(())
    }
}

/// The most nodes one join ticket may admit.
pub const MAX_TICKET_USES: u32 = 1_000;
/// The most unexpired join tickets a mesh keeps.
pub const MAX_JOIN_TICKETS: usize = 1_000;

/// The longest token name.
pub const MAX_TOKEN_NAME: usize = 64;
/// The most tokens a mesh keeps (revoked ones included, until they are purged).
pub const MAX_TOKENS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: &Token) -> TokenRecord {
        TokenRecord {
            id: token.id,
            name: "ci".into(),
            role: Role::Deploy,
            hash: token.hash(),
            created_at: 1_000,
            expires_at: Some(5_000),
            rate_limit: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_token_round_trips_through_its_text_and_hides_its_secret() {
        let token = Token::from_random([7; 40]);
        let text = token.encode();
        assert!(text.starts_with("falak-token-v1.0707070707070707."), "{text}");
        assert_eq!(text.parse::<Token>().unwrap(), token);
        assert!(!format!("{token:?}").contains("0707070707070707070707"), "Debug shows the secret");
        for bad in ["", "falak-token-v1.", "falak-token-v1.zz.00", "bearer x", &text[..text.len() - 2]] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn check_accepts_only_the_right_live_token() {
        let token = Token::from_random([1; 40]);
        let rec = record(&token);
        assert_eq!(rec.check(&token, 4_999), Ok(Role::Deploy));
        assert_eq!(rec.check(&token, 5_000), Err(TokenRefused::Expired { id: token.id }));
        let forged = Token { id: token.id, secret: [2; 32] };
        assert_eq!(rec.check(&forged, 2_000), Err(TokenRefused::Unknown));
        let revoked = TokenRecord { revoked_at: Some(3_000), ..rec };
        assert_eq!(revoked.check(&token, 2_000), Err(TokenRefused::Revoked { id: token.id }));
    }

    #[test]
    fn the_stored_hash_is_not_the_secret() {
        let token = Token::from_random([9; 40]);
        let json = serde_json::to_string(&record(&token)).unwrap();
        assert!(!json.contains(&hex::encode(token.secret)), "{json}");
    }

    #[test]
    fn a_hop_credential_needs_the_node_key_and_is_fresh() {
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let key = Ed25519KeyPair::from_seed_unchecked(&[4u8; 32]).unwrap();
        let node = crate::NodeId(key.public_key().as_ref().try_into().unwrap());
        let me = crate::NodeId([7; 32]);
        let sign = |node: &crate::NodeId, target: &crate::NodeId, at| -> [u8; 64] {
            key.sign(&HopCredential::message(node, target, at)).as_ref().try_into().unwrap()
        };
        let any = |_: &crate::NodeId| true;
        let text = HopCredential::new(node, 100_000, sign(&node, &me, 100_000)).encode();
        assert_eq!(HopCredential::verify(&text, &me, 130_000, any).map(|c| c.node), Some(node));
        assert!(HopCredential::verify(&text, &me, 161_000, any).is_none(), "too old");
        assert!(HopCredential::verify(&text, &me, 39_000, any).is_none(), "from the future");
        assert!(HopCredential::verify(&text, &me, 100_000, |n| *n != node).is_none(), "not admitted");
        // Made for another node: not good here.
        assert!(HopCredential::verify(&text, &crate::NodeId([8; 32]), 100_000, any).is_none(), "another target");
        // Speaking for another (real) node with one's own key, or changing the time, fails.
        let other_key = Ed25519KeyPair::from_seed_unchecked(&[5u8; 32]).unwrap();
        let other = crate::NodeId(other_key.public_key().as_ref().try_into().unwrap());
        let forged = HopCredential::new(other, 100_000, sign(&other, &me, 100_000)).encode();
        assert!(HopCredential::verify(&forged, &me, 100_000, any).is_none(), "another node's name");
        let later = text.replacen(".100000.", ".100001.", 1);
        assert!(HopCredential::verify(&later, &me, 100_000, any).is_none(), "a changed time");
        assert!(HopCredential::verify("x.y.z", &me, 0, any).is_none());
    }

    #[test]
    fn roles_parse_by_name() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("admin, deploy, invoke or read"));
    }
}
