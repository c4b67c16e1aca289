//! Connection limits, counted at admission: the bridge's and each user's
//! open connections. A place is taken before the upgrade, in the same step
//! as the check, and given back when the connection (or a failed upgrade)
//! drops it: simultaneous connects cannot all pass a limit that each sees
//! unreached.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
};

use notify_core::UserId;

use crate::refusal::Refusal;

/// The places taken, and the limits.
#[derive(Debug)]
pub struct Admissions {
    max_connections: usize,
    max_per_user: usize,
    /// Users are counted by a keyed hash of their id: 16 bytes a user
    /// instead of a copy of the id (idle sockets are what a bridge holds
    /// most of); the random key makes a collision nobody can aim for.
    users: RandomState,
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    per_user: HashMap<u64, u32>,
}

impl Admissions {
    pub fn new(max_connections: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            max_per_user,
            users: RandomState::new(),
            taken: Mutex::default(),
        })
    }

    /// Takes a place for a connection of `user`, or says why not.
    pub fn admit(self: &Arc<Self>, user: &UserId) -> Result<Admitted, Refusal> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.total >= self.max_connections {
            return Err(Refusal::BridgeFull);
        }
        let key = self.users.hash_one(user);
        let mine = taken.per_user.entry(key).or_default();
        if *mine as usize >= self.max_per_user {
            return Err(Refusal::UserLimit(self.max_per_user));
        }
        *mine += 1;
        taken.total += 1;
        Ok(Admitted {
            admissions: Arc::clone(self),
            user: key,
        })
    }

    fn release(&self, key: u64) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.total = taken.total.saturating_sub(1);
        if let Some(mine) = taken.per_user.get_mut(&key) {
            *mine -= 1;
            if *mine == 0 {
                taken.per_user.remove(&key);
            }
        }
    }
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    admissions: Arc<Admissions>,
    /// The user's key in the count.
    user: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admissions.release(self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse("sub", name).unwrap()
    }

    #[test]
    fn places_are_taken_at_admission_and_given_back_on_drop() {
        let admissions = Admissions::new(3, 2);
        let a1 = admissions.admit(&user("a")).unwrap();
        let _a2 = admissions.admit(&user("a")).unwrap();
        assert!(matches!(
            admissions.admit(&user("a")),
            Err(Refusal::UserLimit(_))
        ));
        let _b1 = admissions.admit(&user("b")).unwrap();
        assert!(matches!(
            admissions.admit(&user("c")),
            Err(Refusal::BridgeFull)
        ));
        drop(a1);
        let _c1 = admissions.admit(&user("c")).unwrap();
        assert!(matches!(
            admissions.admit(&user("a")),
            Err(Refusal::BridgeFull)
        ));
    }
}
