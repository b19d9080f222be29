//! The async pool client: one Redis deployment (single server or cluster), lazily
//! connected, with per-shard coalescing of reserve / confirm / release / take.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo, RedisError, ScriptInvocation, ServerErrorKind, Value};
use tokio::sync::OnceCell;

use super::coalescer::{BoxFuture, Coalescer, Executor, replicate};
use super::keys::{
    self, bucket, check_holder, check_name, check_quantity, entry_shard, pack, shard_order,
    shard_tag, unpack,
};
use super::scripts::Scripts;
use crate::error::{CoreError, CoreResult};

/// Expired holds (and stale issued records) returned per script call, before its own work:
/// enough to outpace expiry under load, small enough to keep every call's work bounded.
const SWEEP_PER_CALL: u64 = 32;
/// Holds returned per `expire` script call; `expire` loops until a call returns fewer.
const SWEEP_PER_EXPIRE: u64 = 1000;
/// Entries per load/rebuild script call: about 0.5 MB of arguments, a few ms of Redis time.
const LOAD_CHUNK: usize = 4000;
/// TTL of the holds `take_many` places before confirming them all.
const TAKE_MANY_HOLD_MS: u64 = 60_000;
const MAX_TAKE_MANY: usize = 64;
const NO_CLOCK: u64 = u64::MAX;
const MAX_BATCH: usize = 2048;

/// One entry as returned to callers: (entry id, ciphertext).
pub type Entry = (u64, Vec<u8>);

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// One URL (`redis://`, `rediss://`, `unix://`, `redis+unix://`), or cluster seeds.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub namespace: String,
    pub shards: u32,
    pub max_batch: usize,
    pub max_queue: usize,
    /// Connect and response timeout of each Redis call.
    pub timeout: Duration,
    /// How long an issued holder's entries are kept to answer retried take/confirm: between
    /// this and twice this (two generations of records, see `lua/lib.lua`).
    pub issued_ttl_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            namespace: "kami".into(),
            shards: 1,
            max_batch: 256,
            max_queue: 65_536,
            timeout: Duration::from_secs(2),
            issued_ttl_ms: 86_400_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub available: u64,
    pub held: u64,
    pub issued: u64,
}

/// A request served by the coalesced ops script.
#[derive(Debug)]
pub enum Request {
    Reserve {
        holder: String,
        quantity: u64,
        ttl_ms: u64,
        batch: Option<u64>,
    },
    Confirm {
        holder: String,
    },
    Release {
        holder: String,
    },
    Take {
        holder: String,
        quantity: u64,
        batch: Option<u64>,
    },
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Self::Reserve { .. } => "R",
            Self::Confirm { .. } => "C",
            Self::Release { .. } => "X",
            Self::Take { .. } => "T",
        }
    }

    fn holder(&self) -> &str {
        match self {
            Self::Reserve { holder, .. }
            | Self::Confirm { holder }
            | Self::Release { holder }
            | Self::Take { holder, .. } => holder,
        }
    }

    fn quantity(&self) -> u64 {
        match self {
            Self::Reserve { quantity, .. } | Self::Take { quantity, .. } => *quantity,
            Self::Confirm { .. } | Self::Release { .. } => 0,
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Entries(Vec<Entry>),
    Released(u64),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    config: PoolConfig,
    conn: OnceCell<Conn>,
    lanes: Coalescer<Request, Outcome>,
    scripts: Scripts,
    clock_ms: AtomicU64,
}

/// A handle on the pools of one Redis deployment. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

fn map_redis(err: &RedisError) -> CoreError {
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::ResponseError
            | ServerErrorKind::ExecAbort
            | ServerErrorKind::CrossSlot
            | ServerErrorKind::NoScript,
        )
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType => {
            CoreError::Integrity(format!("pool script failed: {err}"))
        }
        ErrorKind::InvalidClientConfig => {
            CoreError::InvalidArgument(format!("bad Redis configuration: {err}"))
        }
        // Connection loss, timeouts, LOADING, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY,
        // BUSY, OOM...: the deployment is (perhaps briefly) unable to serve; retryable.
        _ => CoreError::PoolUnavailable(err.to_string()),
    }
}

fn integrity(what: &str) -> CoreError {
    CoreError::Integrity(format!("unexpected script reply: {what}"))
}

fn as_u64(v: &Value) -> CoreResult<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| integrity("negative count")),
        _ => Err(integrity("expected an integer")),
    }
}

fn as_array(v: Value) -> CoreResult<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(integrity("expected an array")),
    }
}

fn parse_entries(items: impl Iterator<Item = Value>) -> CoreResult<Vec<Entry>> {
    items
        .map(|v| match v {
            Value::BulkString(b) => unpack(b),
            _ => Err(integrity("expected a packed entry")),
        })
        .collect()
}

/// Splits the ops script's flat reply (per request: status, count, `count` values) into
/// one result per request.
fn parse_replies(batch: &[Request], reply: Value) -> CoreResult<Vec<CoreResult<Outcome>>> {
    let mut items = as_array(reply)?.into_iter();
    let mut out = Vec::with_capacity(batch.len());
    for request in batch {
        let status = items.next().as_ref().map(as_u64).transpose()?;
        let count = items
            .next()
            .as_ref()
            .map(as_u64)
            .transpose()?
            .ok_or_else(|| integrity("missing count"))?;
        let count = usize::try_from(count).map_err(|_| integrity("count out of range"))?;
        if count > items.len() {
            return Err(integrity("count beyond the reply"));
        }
        let values: Vec<Value> = items.by_ref().take(count).collect();
        out.push(parse_one(request, status, values)?);
    }
    if items.next().is_some() {
        return Err(integrity("more replies than requests"));
    }
    Ok(out)
}

/// One request's result; the outer error is a malformed reply (fails the whole batch).
fn parse_one(
    request: &Request,
    status: Option<u64>,
    values: Vec<Value>,
) -> CoreResult<CoreResult<Outcome>> {
    let first = values.first().map(as_u64);
    match status {
        Some(0) if matches!(request, Request::Release { .. }) => match first {
            Some(Ok(n)) if values.len() == 1 => Ok(Ok(Outcome::Released(n))),
            _ => Err(integrity("release without a count")),
        },
        Some(0) => {
            // A repeated holder gets its first entries back, whatever quantity it asks
            // now, so only the bounds are checked here.
            if values.is_empty() || values.len() as u64 > keys::MAX_QUANTITY {
                return Err(integrity("wrong number of entries"));
            }
            Ok(Ok(Outcome::Entries(parse_entries(values.into_iter())?)))
        }
        Some(1) => match first {
            Some(Ok(available)) => Ok(Err(CoreError::OutOfStock {
                requested: request.quantity(),
                available,
            })),
            _ => Err(integrity("out of stock without a count")),
        },
        Some(2) => Ok(Err(CoreError::HoldNotFound)),
        _ => Err(integrity("unknown status")),
    }
}

impl Inner {
    fn now_arg(&self) -> String {
        match self.clock_ms.load(Ordering::Relaxed) {
            NO_CLOCK => String::new(),
            ms => ms.to_string(),
        }
    }

    async fn connect(&self) -> CoreResult<Conn> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let open = open(&self.config);
                match tokio::time::timeout(self.config.timeout * 3, open).await {
                    Ok(conn) => conn,
                    Err(_) => Err(CoreError::PoolUnavailable(
                        "timed out connecting to Redis".into(),
                    )),
                }
            })
            .await?;
        Ok(conn.clone())
    }

    async fn eval(&self, inv: &ScriptInvocation<'_>) -> CoreResult<Value> {
        let conn = self.connect().await?;
        let call = async move {
            match conn {
                Conn::Single(mut c) => inv.invoke_async::<Value>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Value>(&mut c).await,
            }
        };
        // The connection's own timeouts should fire first; this guards reconnect loops.
        match tokio::time::timeout(self.config.timeout * 3, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_redis(&e)),
            Err(_) => Err(CoreError::PoolUnavailable(
                "timed out waiting for Redis".into(),
            )),
        }
    }

    async fn run_ops(&self, lane: &str, batch: &[Request]) -> CoreResult<Vec<CoreResult<Outcome>>> {
        let mut inv = self.scripts.ops.key(lane);
        inv.arg(self.now_arg())
            .arg(self.config.issued_ttl_ms)
            .arg(SWEEP_PER_CALL);
        for r in batch {
            let (ttl, b) = match r {
                Request::Reserve { ttl_ms, batch, .. } => (*ttl_ms, *batch),
                Request::Take { batch, .. } => (0, *batch),
                Request::Confirm { .. } | Request::Release { .. } => (0, None),
            };
            inv.arg(r.kind())
                .arg(r.holder())
                .arg(r.quantity())
                .arg(ttl)
                .arg(b.map(|b| b.to_string()).unwrap_or_default());
        }
        parse_replies(batch, self.eval(&inv).await?)
    }

    async fn admin(&self, tag: &str, op: &str, limit: u64, now: Option<u64>) -> CoreResult<Value> {
        let mut inv = self.scripts.admin.key(tag);
        let now = now.map_or_else(|| self.now_arg(), |n| n.to_string());
        inv.arg(op)
            .arg(now)
            .arg(limit)
            .arg(self.config.issued_ttl_ms);
        self.eval(&inv).await
    }

    async fn admin_for_holder(
        &self,
        tag: &str,
        op: &str,
        holder: &str,
        ids: &[u64],
    ) -> CoreResult<Value> {
        let mut inv = self.scripts.admin.key(tag);
        inv.arg(op)
            .arg(self.now_arg())
            .arg(0)
            .arg(self.config.issued_ttl_ms)
            .arg(holder);
        for id in ids {
            inv.arg(&id.to_be_bytes()[..]);
        }
        self.eval(&inv).await
    }
}

impl Executor<Request, Outcome> for Inner {
    fn execute(
        self: Arc<Self>,
        lane: String,
        batch: Vec<Request>,
    ) -> BoxFuture<Vec<CoreResult<Outcome>>> {
        Box::pin(async move {
            match self.run_ops(&lane, &batch).await {
                Ok(results) => results,
                Err(e) => batch.iter().map(|_| Err(replicate(&e))).collect(),
            }
        })
    }
}

async fn open(config: &PoolConfig) -> CoreResult<Conn> {
    // rediss:// needs a rustls crypto provider; without one installed rustls panics. An
    // error means another library installed one already, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = config.timeout;
    let map = |e: RedisError| map_redis(&e);
    if config.cluster {
        let client = ClusterClientBuilder::new(config.urls.clone())
            .connection_timeout(t)
            .response_timeout(t)
            .retries(2)
            .build()
            .map_err(map)?;
        Ok(Conn::Cluster(
            client.get_async_connection().await.map_err(map)?,
        ))
    } else {
        let url = config
            .urls
            .first()
            .ok_or_else(|| CoreError::InvalidArgument("no Redis URL given".into()))?;
        let client = redis::Client::open(url.as_str()).map_err(map)?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, settings)
                .await
                .map_err(map)?,
        ))
    }
}

/// Entries grouped for load: shard -> bucket -> (id, packed entry), sorted by id.
type Grouped = BTreeMap<u32, BTreeMap<String, Vec<(u64, Vec<u8>)>>>;
/// One batch's (id, packed entry) pairs by shard, ids increasing.
type ByShard = BTreeMap<u32, Vec<(u64, Vec<u8>)>>;

impl Pool {
    /// Validates the configuration; connects nothing (the first call does, so a server can
    /// create pools before it forks its workers).
    pub fn new(config: PoolConfig) -> CoreResult<Self> {
        check_name("namespace", &config.namespace)?;
        if config.urls.is_empty() {
            return Err(CoreError::InvalidArgument("no Redis URL given".into()));
        }
        if config.urls.len() > 1 && !config.cluster {
            return Err(CoreError::InvalidArgument(
                "several URLs are only meaningful for a cluster (cluster=True)".into(),
            ));
        }
        for url in &config.urls {
            url.as_str().into_connection_info().map_err(|e| {
                CoreError::InvalidArgument(format!("bad Redis URL: {}", e.category()))
            })?;
        }
        if config.shards == 0 || config.shards > 1024 {
            return Err(CoreError::InvalidArgument("shards must be 1..=1024".into()));
        }
        // The ops script unpacks one argument per request of a batch onto the Lua stack.
        if config.max_batch == 0 || config.max_batch > MAX_BATCH || config.max_queue == 0 {
            return Err(CoreError::InvalidArgument(format!(
                "max_batch must be 1..={MAX_BATCH} and max_queue positive"
            )));
        }
        if config.timeout.is_zero() {
            return Err(CoreError::InvalidArgument(
                "timeout must be positive".into(),
            ));
        }
        let lanes = Coalescer::new(config.max_batch, config.max_queue);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                conn: OnceCell::new(),
                lanes,
                scripts: Scripts::new(),
                clock_ms: AtomicU64::new(NO_CLOCK),
            }),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The "now" scripts use for TTLs, in ms since the epoch; `None` means Redis TIME.
    pub fn clock_ms(&self) -> Option<u64> {
        match self.inner.clock_ms.load(Ordering::Relaxed) {
            NO_CLOCK => None,
            ms => Some(ms),
        }
    }

    pub fn set_clock_ms(&self, ms: Option<u64>) {
        self.inner
            .clock_ms
            .store(ms.unwrap_or(NO_CLOCK), Ordering::Relaxed);
    }

    fn tags(&self, sku: &str) -> CoreResult<Vec<String>> {
        check_name("sku", sku)?;
        let ns = &self.inner.config.namespace;
        Ok((0..self.inner.config.shards)
            .map(|s| shard_tag(ns, sku, s))
            .collect())
    }

    async fn submit(&self, tag: &str, request: Request) -> CoreResult<Outcome> {
        self.inner.lanes.submit(&self.inner, tag, request).await
    }

    /// Sends a hold-creating request to the holder's shards in order until one has stock.
    async fn place(
        &self,
        sku: &str,
        holder: &str,
        quantity: u64,
        make: impl Fn() -> Request,
    ) -> CoreResult<Vec<Entry>> {
        check_name("sku", sku)?;
        check_holder(holder)?;
        check_quantity(quantity)?;
        let ns = &self.inner.config.namespace;
        let mut available = 0;
        for shard in shard_order(holder, self.inner.config.shards) {
            match self.submit(&shard_tag(ns, sku, shard), make()).await {
                Ok(Outcome::Entries(e)) => return Ok(e),
                Ok(Outcome::Released(_)) => return Err(integrity("count for a hold")),
                Err(CoreError::OutOfStock { available: a, .. }) => available += a,
                Err(e) => return Err(e),
            }
        }
        Err(CoreError::OutOfStock {
            requested: quantity,
            available,
        })
    }

    /// Sends a request about an existing hold to the holder's shards until one knows it.
    async fn find(
        &self,
        sku: &str,
        holder: &str,
        make: impl Fn() -> Request,
    ) -> CoreResult<Outcome> {
        check_name("sku", sku)?;
        check_holder(holder)?;
        let ns = &self.inner.config.namespace;
        for shard in shard_order(holder, self.inner.config.shards) {
            match self.submit(&shard_tag(ns, sku, shard), make()).await {
                Err(CoreError::HoldNotFound) => {}
                other => return other,
            }
        }
        Err(CoreError::HoldNotFound)
    }

    pub async fn reserve(
        &self,
        sku: &str,
        holder: &str,
        quantity: u64,
        ttl_ms: u64,
        batch: Option<u64>,
    ) -> CoreResult<Vec<Entry>> {
        if ttl_ms == 0 || ttl_ms >= keys::MAX_EXACT {
            return Err(CoreError::InvalidArgument("ttl_ms must be positive".into()));
        }
        self.place(sku, holder, quantity, || Request::Reserve {
            holder: holder.to_owned(),
            quantity,
            ttl_ms,
            batch,
        })
        .await
    }

    pub async fn take(
        &self,
        sku: &str,
        holder: &str,
        quantity: u64,
        batch: Option<u64>,
    ) -> CoreResult<Vec<Entry>> {
        self.place(sku, holder, quantity, || Request::Take {
            holder: holder.to_owned(),
            quantity,
            batch,
        })
        .await
    }

    pub async fn confirm(&self, sku: &str, holder: &str) -> CoreResult<Vec<u64>> {
        let outcome = self
            .find(sku, holder, || Request::Confirm {
                holder: holder.to_owned(),
            })
            .await?;
        match outcome {
            Outcome::Entries(e) => Ok(e.into_iter().map(|(id, _)| id).collect()),
            Outcome::Released(_) => Err(integrity("count for a confirm")),
        }
    }

    pub async fn release(&self, sku: &str, holder: &str) -> CoreResult<u64> {
        let outcome = self
            .find(sku, holder, || Request::Release {
                holder: holder.to_owned(),
            })
            .await?;
        match outcome {
            Outcome::Released(n) => Ok(n),
            Outcome::Entries(_) => Err(integrity("entries for a release")),
        }
    }

    /// Several SKUs for one holder, all or nothing. On one server: one script call over
    /// the holder's first shard of each pool (falling back to the cluster path when a
    /// sharded pool's first shard is short). On a cluster, pools live in different slots:
    /// hold each, give every hold back if one SKU is short, then confirm them all; a crash
    /// between the steps leaves holds that return by TTL, and a retry with the same holder
    /// resumes.
    pub async fn take_many(
        &self,
        requests: &[(String, u64)],
        holder: &str,
    ) -> CoreResult<Vec<(String, Vec<Entry>)>> {
        Self::check_take_many(requests)?;
        check_holder(holder)?;
        if !self.inner.config.cluster {
            match self.take_many_script(requests, holder).await {
                Err(CoreError::OutOfStock { .. }) if self.inner.config.shards > 1 => {}
                other => return other,
            }
        }
        self.take_many_steps(requests, holder).await
    }

    fn check_take_many(requests: &[(String, u64)]) -> CoreResult<()> {
        if requests.is_empty() || requests.len() > MAX_TAKE_MANY {
            return Err(CoreError::InvalidArgument(format!(
                "take_many takes 1..={MAX_TAKE_MANY} SKUs"
            )));
        }
        let mut seen = HashSet::new();
        for (sku, quantity) in requests {
            check_name("sku", sku)?;
            check_quantity(*quantity)?;
            if !seen.insert(sku.as_str()) {
                return Err(CoreError::InvalidArgument(format!("SKU {sku} given twice")));
            }
        }
        Ok(())
    }

    async fn take_many_script(
        &self,
        requests: &[(String, u64)],
        holder: &str,
    ) -> CoreResult<Vec<(String, Vec<Entry>)>> {
        let ns = &self.inner.config.namespace;
        let first = shard_order(holder, self.inner.config.shards)
            .first()
            .copied()
            .unwrap_or(0);
        let mut inv = self.inner.scripts.take_many.prepare_invoke();
        for (sku, _) in requests {
            inv.key(shard_tag(ns, sku, first));
        }
        inv.arg(self.inner.now_arg())
            .arg(self.inner.config.issued_ttl_ms)
            .arg(SWEEP_PER_CALL)
            .arg(holder);
        for (_, quantity) in requests {
            inv.arg(*quantity);
        }
        let mut items = as_array(self.inner.eval(&inv).await?)?.into_iter();
        match items.next().as_ref().map(as_u64).transpose()? {
            Some(0) => {
                let mut out = Vec::with_capacity(requests.len());
                for (sku, _) in requests {
                    let n = items
                        .next()
                        .as_ref()
                        .map(as_u64)
                        .transpose()?
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| integrity("missing count"))?;
                    let entries = parse_entries(items.by_ref().take(n))?;
                    if entries.len() != n || n == 0 {
                        return Err(integrity("wrong number of entries"));
                    }
                    out.push((sku.clone(), entries));
                }
                Ok(out)
            }
            Some(1) => {
                let index = items.next().as_ref().map(as_u64).transpose()?;
                let available = items.next().as_ref().map(as_u64).transpose()?;
                let requested = index
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| requests.get(i.checked_sub(1)?))
                    .map(|(_, q)| *q);
                match (requested, available) {
                    (Some(requested), Some(available)) => Err(CoreError::OutOfStock {
                        requested,
                        available,
                    }),
                    _ => Err(integrity("out of stock without a pool")),
                }
            }
            _ => Err(integrity("unknown status")),
        }
    }

    async fn take_many_steps(
        &self,
        requests: &[(String, u64)],
        holder: &str,
    ) -> CoreResult<Vec<(String, Vec<Entry>)>> {
        let mut held: Vec<(String, Vec<Entry>)> = Vec::with_capacity(requests.len());
        for (sku, quantity) in requests {
            match self
                .reserve(sku, holder, *quantity, TAKE_MANY_HOLD_MS, None)
                .await
            {
                Ok(entries) => held.push((sku.clone(), entries)),
                Err(e) => {
                    for (done, _) in &held {
                        // Best effort: a hold we fail to release returns by its TTL.
                        let _ = self.release(done, holder).await;
                    }
                    return Err(e);
                }
            }
        }
        for (sku, _) in &held {
            self.confirm(sku, holder).await?;
        }
        Ok(held)
    }

    fn group(&self, entries: Vec<(u64, Vec<u8>, String)>) -> CoreResult<Grouped> {
        let shards = self.inner.config.shards;
        let mut grouped: Grouped = BTreeMap::new();
        for (id, ciphertext, bucket) in entries {
            let packed = pack(id, &ciphertext)?;
            grouped
                .entry(entry_shard(id, shards))
                .or_default()
                .entry(bucket)
                .or_default()
                .push((id, packed));
        }
        for buckets in grouped.values_mut() {
            for list in buckets.values_mut() {
                list.sort_unstable_by_key(|(id, _)| *id);
            }
        }
        Ok(grouped)
    }

    /// One shard's load calls: chunks of at most `LOAD_CHUNK` entries. With `rebuild`, the
    /// first call clears the shard and sets its issued count.
    async fn load_shard(
        &self,
        tag: &str,
        buckets: BTreeMap<String, Vec<(u64, Vec<u8>)>>,
        rebuild: Option<u64>,
    ) -> CoreResult<u64> {
        let mut flat: Vec<(&str, &(u64, Vec<u8>))> = Vec::new();
        for (b, list) in &buckets {
            flat.extend(list.iter().map(|e| (b.as_str(), e)));
        }
        let mut chunks = flat.chunks(LOAD_CHUNK);
        let first = chunks.next();
        if first.is_none() && rebuild.is_none() {
            return Ok(0);
        }
        let mut current = Some(self.load_invocation(tag, first.unwrap_or(&[]), rebuild));
        let mut added = 0;
        while let Some(inv) = current.take() {
            // Redis runs this chunk while the next one's arguments are built.
            let next_chunk = chunks.next();
            let (reply, next) = tokio::join!(self.inner.eval(&inv), async {
                next_chunk.map(|chunk| self.load_invocation(tag, chunk, None))
            });
            added += as_u64(&reply?)?;
            current = next;
        }
        Ok(added)
    }

    /// One load call over `chunk` (bucket, (id, packed entry)), sorted by bucket then id;
    /// with `rebuild` (the shard's first call), it clears the shard and sets the issued count.
    fn load_invocation(
        &self,
        tag: &str,
        chunk: &[(&str, &(u64, Vec<u8>))],
        rebuild: Option<u64>,
    ) -> ScriptInvocation<'_> {
        let mut inv = self.inner.scripts.load.key(tag);
        match rebuild {
            Some(issued) => inv.arg("R").arg(issued),
            None => inv.arg("L").arg(0),
        };
        for group in chunk.chunk_by(|a, b| a.0 == b.0) {
            inv.arg(group[0].0).arg(group.len());
            for (_, (id, _)) in group {
                inv.arg(*id);
            }
            for (_, (_, packed)) in group {
                inv.arg(packed.as_slice());
            }
        }
        inv
    }

    /// Adds entries (id, ciphertext, priority) of `batch`; returns how many were new.
    pub async fn load(
        &self,
        sku: &str,
        entries: Vec<(u64, Vec<u8>, i64)>,
        batch: u64,
    ) -> CoreResult<u64> {
        let tags = self.tags(sku)?;
        let entries = entries
            .into_iter()
            .map(|(id, ct, prio)| Ok((id, ct, bucket(prio, batch)?)))
            .collect::<CoreResult<Vec<_>>>()?;
        let mut added = 0;
        for (shard, buckets) in self.group(entries)? {
            let tag = tags
                .get(shard as usize)
                .ok_or_else(|| integrity("shard out of range"))?;
            added += self.load_shard(tag, buckets, None).await?;
        }
        Ok(added)
    }

    /// A batch's (id, packed entry) pairs by shard, refusing ids that do not increase.
    fn sorted_by_shard(&self, entries: Vec<(u64, Vec<u8>)>) -> CoreResult<ByShard> {
        if entries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(CoreError::InvalidArgument(
                "entry ids must be strictly increasing".into(),
            ));
        }
        let shards = self.inner.config.shards;
        let mut by_shard = ByShard::new();
        for entry in entries {
            by_shard
                .entry(entry_shard(entry.0, shards))
                .or_default()
                .push(entry);
        }
        Ok(by_shard)
    }

    /// Adds one batch's entries of one priority, as (id, packed entry) in increasing id
    /// order (see `keys::pack`); returns how many were new. `load` without the per-entry
    /// grouping, for imports.
    pub async fn load_sorted(
        &self,
        sku: &str,
        priority: i64,
        batch: u64,
        entries: Vec<(u64, Vec<u8>)>,
    ) -> CoreResult<u64> {
        let tags = self.tags(sku)?;
        let name = bucket(priority, batch)?;
        let by_shard = self.sorted_by_shard(entries)?;
        let mut added = 0;
        for (shard, list) in by_shard {
            let tag = tags
                .get(shard as usize)
                .ok_or_else(|| integrity("shard out of range"))?;
            let buckets = BTreeMap::from([(name.clone(), list)]);
            added += self.load_shard(tag, buckets, None).await?;
        }
        Ok(added)
    }

    /// Parks one batch's entries of one priority, as (id, packed entry) in increasing id
    /// order, where no take can see them; returns how many are parked. An import parks its
    /// keys while PostgreSQL commits them, then `activate_parked` (committed) or
    /// `unpark` (rolled back). Parked entries left unclaimed vanish after `ttl_s`.
    pub async fn park_sorted(
        &self,
        sku: &str,
        priority: i64,
        batch: u64,
        entries: Vec<(u64, Vec<u8>)>,
        ttl_s: u64,
    ) -> CoreResult<u64> {
        let tags = self.tags(sku)?;
        let name = bucket(priority, batch)?;
        let mut parked = 0;
        for (shard, entries) in self.sorted_by_shard(entries)? {
            let list: Vec<Vec<u8>> = entries.into_iter().map(|(_, packed)| packed).collect();
            let tag = tags
                .get(shard as usize)
                .ok_or_else(|| integrity("shard out of range"))?;
            let build = |chunk: &[Vec<u8>], first: bool| {
                let mut inv = self.inner.scripts.load.key(tag);
                inv.arg("P")
                    .arg(u8::from(first))
                    .arg(ttl_s.max(1))
                    .arg(&name);
                for packed in chunk {
                    inv.arg(packed.as_slice());
                }
                inv
            };
            let mut chunks = list.chunks(LOAD_CHUNK);
            let mut current = chunks.next().map(|chunk| build(chunk, true));
            let mut shard_len = 0;
            while let Some(inv) = current.take() {
                // Redis runs this chunk while the next one's arguments are built.
                let next_chunk = chunks.next();
                let (reply, next) = tokio::join!(self.inner.eval(&inv), async {
                    next_chunk.map(|chunk| build(chunk, false))
                });
                shard_len = as_u64(&reply?)?;
                current = next;
            }
            parked += shard_len;
        }
        Ok(parked)
    }

    /// Makes a batch's parked entries available (`last_id`: the batch's highest entry id,
    /// the bucket's load high-water mark); returns how many. None when a shard refused
    /// (the bucket was live already, or the pool is gone): its parked entries are dropped
    /// and the caller loads the batch the usual way, which skips what was activated.
    pub async fn activate_parked(
        &self,
        sku: &str,
        priority: i64,
        batch: u64,
        last_id: u64,
    ) -> CoreResult<Option<u64>> {
        let name = bucket(priority, batch)?;
        let mut activated = 0;
        let mut refused = false;
        for tag in self.tags(sku)? {
            let mut inv = self.inner.scripts.load.key(&tag);
            inv.arg("A").arg(0).arg(&name).arg(last_id);
            match self.inner.eval(&inv).await? {
                Value::Int(n) if n >= 0 => activated += n.unsigned_abs(),
                Value::Int(_) => refused = true,
                _ => return Err(integrity("unexpected activate reply")),
            }
        }
        Ok((!refused).then_some(activated))
    }

    /// Drops a batch's parked entries (its import did not commit).
    pub async fn unpark(&self, sku: &str, priority: i64, batch: u64) -> CoreResult<()> {
        let name = bucket(priority, batch)?;
        for tag in self.tags(sku)? {
            let mut inv = self.inner.scripts.load.key(&tag);
            inv.arg("U").arg(0).arg(&name);
            self.inner.eval(&inv).await?;
        }
        Ok(())
    }

    /// Replaces the pool with `entries` (id, ciphertext, priority, batch), dropping holds
    /// and issued records, and sets the issued count. Each shard is replaced by its first
    /// script call; a shard larger than one chunk fills up over the following calls.
    pub async fn rebuild(
        &self,
        sku: &str,
        entries: Vec<(u64, Vec<u8>, i64, u64)>,
        issued: u64,
    ) -> CoreResult<u64> {
        let tags = self.tags(sku)?;
        let entries = entries
            .into_iter()
            .map(|(id, ct, prio, b)| Ok((id, ct, bucket(prio, b)?)))
            .collect::<CoreResult<Vec<_>>>()?;
        let mut grouped = self.group(entries)?;
        let mut added = 0;
        for (shard, tag) in (0u32..).zip(&tags) {
            let buckets = grouped.remove(&shard).unwrap_or_default();
            let count = if shard == 0 { issued } else { 0 };
            added += self.load_shard(tag, buckets, Some(count)).await?;
        }
        Ok(added)
    }

    /// Deletes the pool (all shards); returns how many available entries it had.
    pub async fn drain(&self, sku: &str) -> CoreResult<u64> {
        let mut n = 0;
        for tag in self.tags(sku)? {
            let mut inv = self.inner.scripts.load.key(&tag);
            inv.arg("D").arg(0);
            n += as_u64(&self.inner.eval(&inv).await?)?;
        }
        Ok(n)
    }

    pub async fn stock(&self, sku: &str) -> CoreResult<Stock> {
        let mut total = Stock {
            available: 0,
            held: 0,
            issued: 0,
        };
        for tag in self.tags(sku)? {
            let v = as_array(self.inner.admin(&tag, "S", SWEEP_PER_CALL, None).await?)?;
            let [a, h, i] = v.as_slice() else {
                return Err(integrity("stock needs three counts"));
            };
            total.available += as_u64(a)?;
            total.held += as_u64(h)?;
            total.issued += as_u64(i)?;
        }
        Ok(total)
    }

    /// Returns every hold whose TTL passed (as of `now_ms`, else the pool's clock) to the
    /// pool; returns how many holds were returned.
    pub async fn expire(&self, sku: &str, now_ms: Option<u64>) -> CoreResult<u64> {
        let mut n = 0;
        for tag in self.tags(sku)? {
            loop {
                let got = as_u64(
                    &self
                        .inner
                        .admin(&tag, "E", SWEEP_PER_EXPIRE, now_ms)
                        .await?,
                )?;
                n += got;
                if got < SWEEP_PER_EXPIRE {
                    break;
                }
            }
        }
        Ok(n)
    }

    pub async fn exists(&self, sku: &str) -> CoreResult<bool> {
        for tag in self.tags(sku)? {
            if as_u64(&self.inner.admin(&tag, "X", 0, None).await?)? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Puts the entries of `holder`'s issued record back into the pool (on whichever shard
    /// holds it), except those in `drop`, and forgets the record; returns how many entries
    /// went back. For takes the database never committed; 0 when there is no record.
    pub async fn restore(&self, sku: &str, holder: &str, drop: &[u64]) -> CoreResult<u64> {
        let mut n = 0;
        for tag in self.tags(sku)? {
            n += as_u64(&self.inner.admin_for_holder(&tag, "R", holder, drop).await?)?;
        }
        Ok(n)
    }

    /// Holders with a live hold or an issued record, over all shards.
    pub async fn holders(&self, sku: &str) -> CoreResult<Vec<String>> {
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for tag in self.tags(sku)? {
            for v in as_array(self.inner.admin(&tag, "H", 0, None).await?)? {
                let Value::BulkString(b) = v else {
                    return Err(integrity("holder name"));
                };
                let name = String::from_utf8_lossy(&b).into_owned();
                if seen.insert(name.clone()) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(holder: &str, quantity: u64) -> Request {
        Request::Take {
            holder: holder.into(),
            quantity,
            batch: None,
        }
    }

    fn bulk(id: u64) -> Value {
        Value::BulkString(pack(id, b"ct").unwrap_or_default())
    }

    #[test]
    fn flat_replies_split_per_request() {
        let release = Request::Release { holder: "h".into() };
        let batch = [take("a", 2), take("b", 5), release, take("c", 1)];
        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Int(2),
            bulk(7),
            bulk(8),
            Value::Int(1),
            Value::Int(1),
            Value::Int(3),
            Value::Int(0),
            Value::Int(1),
            Value::Int(2),
            Value::Int(2),
            Value::Int(0),
        ]);
        let out = parse_replies(&batch, reply).unwrap_or_default();
        assert_eq!(out.len(), 4);
        assert!(
            matches!(&out[0], Ok(Outcome::Entries(e)) if e.iter().map(|x| x.0).collect::<Vec<_>>() == [7, 8])
        );
        assert!(matches!(
            out[1],
            Err(CoreError::OutOfStock {
                requested: 5,
                available: 3
            })
        ));
        assert!(matches!(out[2], Ok(Outcome::Released(2))));
        assert!(matches!(out[3], Err(CoreError::HoldNotFound)));
    }

    #[test]
    fn malformed_replies_are_integrity_errors() {
        let one = [take("a", 1)];
        for bad in [
            Value::Int(0),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(9), Value::Int(0)]),
            Value::Array(vec![Value::Int(0), Value::Int(0)]),
            Value::Array(vec![Value::Int(0), Value::Int(2), bulk(1)]),
            Value::Array(vec![Value::Int(0), Value::Int(1), Value::Int(1)]),
            Value::Array(vec![
                Value::Int(2),
                Value::Int(0),
                Value::Int(2),
                Value::Int(0),
            ]),
        ] {
            assert!(matches!(
                parse_replies(&one, bad),
                Err(CoreError::Integrity(_))
            ));
        }
    }

    #[test]
    fn config_is_checked_without_connecting() {
        let ok = Pool::new(PoolConfig::default());
        assert!(ok.is_ok());
        for config in [
            PoolConfig {
                urls: vec!["nope://x".into()],
                ..PoolConfig::default()
            },
            PoolConfig {
                namespace: "a{b}".into(),
                ..PoolConfig::default()
            },
            PoolConfig {
                shards: 0,
                ..PoolConfig::default()
            },
            PoolConfig {
                urls: vec!["redis://a".into(), "redis://b".into()],
                ..PoolConfig::default()
            },
        ] {
            assert!(matches!(
                Pool::new(config),
                Err(CoreError::InvalidArgument(_))
            ));
        }
        let unix = PoolConfig {
            urls: vec!["unix:///tmp/redis.sock".into()],
            ..PoolConfig::default()
        };
        assert!(Pool::new(unix).is_ok());
    }

    #[test]
    fn redis_errors_map_to_retryable_or_integrity() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(matches!(map_redis(&io), CoreError::PoolUnavailable(_)));
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "bad"));
        assert!(matches!(map_redis(&parse), CoreError::Integrity(_)));
    }
}
