//! The daemon's clock checked against DynamoDB's.
//!
//! Expiry on this backend is judged on the daemons' clocks (see "Time" in
//! the module docs), so a daemon whose clock is off would grant leases that
//! are still current, or keep leases past their end. Every DynamoDB response
//! carries a `Date` header: the engine's clock, to the second. An
//! interceptor on the SDK client compares it with this daemon's clock at
//! sending and at receiving, which bounds the skew from below without
//! guessing at the network delay:
//!
//! - ahead by at least `sent − (date + 1 s)` (the server's clock read no more
//!   than a second past `date`, and no earlier than the request was sent);
//! - behind by at least `date − received`.
//!
//! When that bound exceeds `max_clock_skew` (default 1 s), the backend
//! refuses to grant or renew, and its health check fails with the skew and
//! the fix. Each response replaces the previous judgement, so the backend
//! recovers once the clock is corrected. Daemons that are each within the
//! bound of DynamoDB's clock are within twice the bound of one another.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// What the responses so far say about this daemon's clock.
#[derive(Debug)]
pub struct ClockCheck {
    /// The latest lower bound of the skew in milliseconds: positive when
    /// this daemon's clock is ahead, negative when behind, 0 when within
    /// what the `Date` header can tell.
    skew_ms: AtomicI64,
    max: Duration,
}

impl ClockCheck {
    /// A check that allows `max` of skew; nothing observed yet.
    pub fn new(max: Duration) -> Arc<Self> {
        Arc::new(Self {
            skew_ms: AtomicI64::new(0),
            max,
        })
    }

    /// Takes in one response: sent and received on this daemon's clock,
    /// `date` from the engine's.
    pub fn observe(&self, sent: SystemTime, received: SystemTime, date: SystemTime) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let latest_server = date + Duration::from_secs(1);
        let skew = if let Ok(ahead) = sent.duration_since(latest_server) {
            ms(ahead)
        } else if let Ok(behind) = date.duration_since(received) {
            -ms(behind)
        } else {
            0
        };
        self.skew_ms.store(skew, Ordering::Relaxed);
    }

    /// `Err` with the reason when the clock is known to be off by more than
    /// the bound.
    pub fn verdict(&self) -> Result<(), String> {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let off = Duration::from_millis(skew.unsigned_abs());
        if off <= self.max {
            return Ok(());
        }
        let direction = if skew > 0 { "ahead of" } else { "behind" };
        Err(format!(
            "this daemon's clock is at least {:.1}s {direction} DynamoDB's (max_clock_skew is {:?}); \
             expiry is judged on the daemons' clocks, so it grants nothing until its clock is \
             synchronised (check NTP/chrony on this host)",
            off.as_secs_f64(),
            self.max
        ))
    }

    /// The interceptor that feeds this check.
    pub fn interceptor(self: &Arc<Self>) -> DateInterceptor {
        DateInterceptor {
            check: self.clone(),
        }
    }
}

/// When the current attempt was sent, kept in the request's config bag.
#[derive(Debug, Clone, Copy)]
struct SentAt(SystemTime);

impl Storable for SentAt {
    type Storer = StoreReplace<Self>;
}

/// Reads the `Date` of every DynamoDB response into a [`ClockCheck`].
#[derive(Debug)]
pub struct DateInterceptor {
    check: Arc<ClockCheck>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Intercept for DateInterceptor {
    fn name(&self) -> &'static str {
        "stormlock-clock-check"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(SentAt(SystemTime::now()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received = SystemTime::now();
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
            .and_then(|d| SystemTime::try_from(d).ok());
        if let (Some(date), Some(SentAt(sent))) = (date, cfg.load::<SentAt>()) {
            self.check.observe(*sent, received, date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn the_bound_never_blames_a_synchronised_clock() {
        let check = ClockCheck::new(Duration::from_secs(1));
        // In sync, a slow round trip and the Date's truncation to a second.
        check.observe(at(100, 900), at(102, 500), at(101, 0));
        assert_eq!(check.skew_ms.load(Ordering::Relaxed), 0);
        assert!(check.verdict().is_ok());
        // Sent 1.5 s after the server's second ended: ahead by 1.5 s at least.
        check.observe(at(103, 500), at(103, 600), at(101, 0));
        assert_eq!(check.skew_ms.load(Ordering::Relaxed), 1_500);
        let refused = check.verdict().expect_err("1.5 s ahead");
        assert!(refused.contains("ahead of DynamoDB's"), "{refused}");
        // A later response in sync clears it.
        check.observe(at(200, 100), at(200, 200), at(200, 0));
        assert!(check.verdict().is_ok());
        // Received 30 s before the server's Date: behind.
        check.observe(at(170, 0), at(170, 100), at(200, 0));
        assert_eq!(check.skew_ms.load(Ordering::Relaxed), -29_900);
        assert!(check.verdict().expect_err("behind").contains("behind"));
    }
}
