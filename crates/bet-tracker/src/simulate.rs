//! `bet-tracker simulate`: what BetService would do, for demos and benches.
//! Fights go through their life in the `fights` table at a steady rate of
//! changes per second: created open, then accepted (and later completed) or
//! cancelled; a few are created with a deadline a second away and left open,
//! so the tracker expires them. Each change is one statement (its own
//! transaction), stamped `updated_at = clock_timestamp()`: a client that
//! receives the event can tell how long after the commit it arrived.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify_store::{
    Database, StoreError,
    fights::{FightBook, NewFight},
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Fight changes per second.
    pub rate: u32,
    /// Users fights are drawn between (`sim-user-{n}`).
    pub users: u32,
    /// Stop after this long (`None`: until cancelled).
    pub duration: Option<Duration>,
}

/// Changes in flight at once: enough connections to hold the rate while
/// each change waits for its commit.
const IN_FLIGHT: usize = 32;

/// Fights by the step they are at; a fight joins a pool once its last change
/// committed, so its next change never overtakes it.
#[derive(Default)]
struct Pools {
    open: VecDeque<Fight>,
    accepted: VecDeque<Fight>,
}

#[derive(Clone)]
struct Fight {
    id: String,
    creator: u32,
    acceptor: u32,
}

enum Step {
    Create(Fight, bool),
    Accept(Fight),
    Complete(Fight),
    Cancel(Fight),
}

/// SplitMix64: cheap, deterministic per run.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the simulation; returns how many changes were written.
pub async fn run(
    database: &Database,
    sim: Simulation,
    shutdown: CancellationToken,
) -> Result<u64, StoreError> {
    let mut database = database.clone();
    if let Database::Postgres(pg) = &mut database {
        pg.pool_size = IN_FLIGHT;
    }
    let book = database.fight_book()?;
    let run_id = std::process::id();
    let pools = Arc::new(Mutex::new(Pools::default()));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut dice = Dice(u64::from(run_id) << 32 | u64::from(sim.rate));
    let users = u64::from(sim.users.max(2));
    let gap = Duration::from_secs(1) / sim.rate.max(1);
    let started = tokio::time::Instant::now();
    let mut written = 0u64;
    let mut created = 0u64;
    loop {
        if shutdown.is_cancelled() || sim.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        tokio::time::sleep_until(started + gap * u32::try_from(written).unwrap_or(u32::MAX)).await;
        let step = {
            let mut p = pools.lock().expect("pools lock");
            let roll = dice.below(100);
            if roll < 40 && !p.open.is_empty() {
                let mut fight = p.open.pop_front().expect("non-empty");
                let acceptor = dice.below(users - 1) as u32;
                fight.acceptor = if acceptor >= fight.creator {
                    acceptor + 1
                } else {
                    acceptor
                };
                Step::Accept(fight)
            } else if roll < 75 && !p.accepted.is_empty() {
                Step::Complete(p.accepted.pop_front().expect("non-empty"))
            } else if roll < 80 && !p.open.is_empty() {
                Step::Cancel(p.open.pop_front().expect("non-empty"))
            } else {
                created += 1;
                let fight = Fight {
                    id: format!("sim-{run_id}-{created}"),
                    creator: dice.below(users) as u32,
                    acceptor: 0,
                };
                // One in twenty is left open past a near deadline: it expires.
                Step::Create(fight, dice.below(20) == 0)
            }
        };
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let (book, pools) = (book.clone(), pools.clone());
        let stake = 100 * (1 + dice.below(50) as i64);
        tasks.spawn(async move {
            let result = apply(book.as_ref(), &pools, step, stake).await;
            drop(permit);
            result
        });
        written += 1;
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| StoreError::Internal(e.to_string()))??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| StoreError::Internal(e.to_string()))??;
    }
    Ok(written)
}

fn user(n: u32) -> String {
    format!("sim-user-{n}")
}

async fn apply(
    book: &dyn FightBook,
    pools: &Mutex<Pools>,
    step: Step,
    stake: i64,
) -> Result<(), StoreError> {
    match step {
        Step::Create(fight, expires_soon) => {
            let within = Duration::from_secs(if expires_soon { 1 } else { 3600 });
            book.create(&NewFight {
                id: &fight.id,
                creator_id: &user(fight.creator),
                stake,
                currency: "EUR",
                accept_within: within,
            })
            .await?;
            if !expires_soon {
                pools.lock().expect("pools lock").open.push_back(fight);
            }
        }
        Step::Accept(fight) => {
            book.accept(&fight.id, &user(fight.acceptor)).await?;
            pools.lock().expect("pools lock").accepted.push_back(fight);
        }
        Step::Complete(fight) => {
            let winner = if fight.id.len() % 2 == 0 {
                fight.creator
            } else {
                fight.acceptor
            };
            book.complete(&fight.id, &user(winner)).await?;
        }
        Step::Cancel(fight) => book.cancel(&fight.id).await?,
    }
    Ok(())
}
