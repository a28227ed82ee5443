//! Which fault, if any, the mock injects into a request: seeded random rates for load tests, and
//! per-request directives written in the prompt for tests that need an exact script.
//!
//! Directives (anywhere in the prompt text):
//! - `[mock:status=CODE]`: every attempt of this request answers HTTP CODE.
//! - `[mock:fail=N:WHAT]`: the first N attempts of this exact body fail with WHAT (an HTTP
//!   status, `reset`, `hang`, `truncated`, `schema`, or one of the misbehaviours `html`,
//!   `redirect`, `huge`, `slowloris`), later ones succeed.
//! - `[mock:delay=MS]`: this request spends MS milliseconds in its slot instead of the
//!   configured latency (to make one request slow on purpose).

use std::collections::HashMap;
use std::sync::Mutex;

/// Per-request fault probabilities, each in `[0, 1]`, drawn in arrival order from a seeded RNG.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// HTTP 500 with an Ollama error body.
    pub server_error: f64,
    /// HTTP 429 with `Retry-After`.
    pub rate_limited: f64,
    /// The connection is cut after the headers.
    pub reset: f64,
    /// No answer for a long time (past any sensible client timeout).
    pub hang: f64,
    /// HTTP 200 whose JSON body is cut short.
    pub truncated: f64,
    /// HTTP 200 whose text ignores the requested output schema.
    pub bad_output: f64,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    Reset,
    Hang,
    Truncated,
    /// A well-formed answer whose text is not the structured output asked for.
    BadOutput,
    /// HTTP 200 with an HTML page (a proxy's error page, say).
    Html,
    /// HTTP 302 to another host.
    Redirect,
    /// HTTP 200 with a body of many megabytes.
    Huge,
    /// HTTP 200 whose body arrives a byte a second, never ending.
    Slowloris,
}

impl Fault {
    fn parse(text: &str) -> Option<Fault> {
        match text {
            "reset" => Some(Fault::Reset),
            "hang" => Some(Fault::Hang),
            "truncated" => Some(Fault::Truncated),
            "schema" => Some(Fault::BadOutput),
            "html" => Some(Fault::Html),
            "redirect" => Some(Fault::Redirect),
            "huge" => Some(Fault::Huge),
            "slowloris" => Some(Fault::Slowloris),
            code => code
                .parse()
                .ok()
                .filter(|code| (100..600).contains(code))
                .map(Fault::Status),
        }
    }
}

/// A directive found in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Always(u16),
    FirstAttempts(u32, Fault),
    Delay(std::time::Duration),
}

pub fn parse_directive(prompt: &str) -> Option<Directive> {
    let start = prompt.find("[mock:")?;
    let rest = &prompt[start + "[mock:".len()..];
    let body = &rest[..rest.find(']')?];
    if let Some(millis) = body.strip_prefix("delay=") {
        return millis
            .parse()
            .ok()
            .map(|ms| Directive::Delay(std::time::Duration::from_millis(ms)));
    }
    if let Some(code) = body.strip_prefix("status=") {
        return code.parse().ok().map(Directive::Always);
    }
    let (count, fault) = body.strip_prefix("fail=")?.split_once(':')?;
    Some(Directive::FirstAttempts(
        count.parse().ok()?,
        Fault::parse(fault)?,
    ))
}

/// Decides faults. Shared by all requests of a mock server.
pub struct FaultPlan {
    rates: FaultRates,
    rng: Mutex<fastrand::Rng>,
    /// Attempts seen per body hash, only for bodies carrying a `fail=` directive.
    attempts: Mutex<HashMap<u64, u32>>,
}

impl FaultPlan {
    pub fn new(rates: FaultRates, seed: u64) -> FaultPlan {
        FaultPlan {
            rates,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// The fault for this arrival of the body hashed to `key`, if any.
    pub fn choose(&self, key: u64, directive: Option<Directive>) -> Option<Fault> {
        match directive {
            Some(Directive::Always(status)) => return Some(Fault::Status(status)),
            Some(Directive::FirstAttempts(count, fault)) => {
                let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
                let seen = attempts.entry(key).or_insert(0);
                *seen += 1;
                return (*seen <= count).then_some(fault);
            }
            Some(Directive::Delay(_)) | None => {}
        }
        let draw = self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
        let FaultRates {
            server_error,
            rate_limited,
            reset,
            hang,
            truncated,
            bad_output,
        } = self.rates;
        let mut threshold = 0.0;
        for (rate, fault) in [
            (server_error, Fault::Status(500)),
            (rate_limited, Fault::Status(429)),
            (reset, Fault::Reset),
            (hang, Fault::Hang),
            (truncated, Fault::Truncated),
            (bad_output, Fault::BadOutput),
        ] {
            threshold += rate;
            if draw < threshold {
                return Some(fault);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse() {
        assert_eq!(
            parse_directive("x [mock:status=404] y"),
            Some(Directive::Always(404))
        );
        assert_eq!(
            parse_directive("[mock:fail=2:429]"),
            Some(Directive::FirstAttempts(2, Fault::Status(429)))
        );
        assert_eq!(
            parse_directive("[mock:fail=1:reset]"),
            Some(Directive::FirstAttempts(1, Fault::Reset))
        );
        assert_eq!(
            parse_directive("[mock:delay=250]"),
            Some(Directive::Delay(std::time::Duration::from_millis(250)))
        );
        assert_eq!(parse_directive("[mock:fail=x:429]"), None);
        assert_eq!(parse_directive("no directive"), None);
    }

    #[test]
    fn fail_directive_counts_attempts_per_body() {
        let plan = FaultPlan::new(FaultRates::default(), 1);
        let directive = Some(Directive::FirstAttempts(2, Fault::Status(503)));
        assert_eq!(plan.choose(7, directive), Some(Fault::Status(503)));
        assert_eq!(plan.choose(8, directive), Some(Fault::Status(503)));
        assert_eq!(plan.choose(7, directive), Some(Fault::Status(503)));
        assert_eq!(plan.choose(7, directive), None);
    }

    #[test]
    fn random_rates_are_seeded_and_roughly_right() {
        let rates = FaultRates {
            server_error: 0.2,
            reset: 0.05,
            ..FaultRates::default()
        };
        let draw = |seed| {
            let plan = FaultPlan::new(rates, seed);
            (0..10_000)
                .map(|_| plan.choose(0, None))
                .collect::<Vec<_>>()
        };
        let first = draw(42);
        assert_eq!(first, draw(42));
        let errors = first
            .iter()
            .filter(|f| **f == Some(Fault::Status(500)))
            .count();
        let resets = first.iter().filter(|f| **f == Some(Fault::Reset)).count();
        assert!((1800..2200).contains(&errors), "{errors}");
        assert!((380..620).contains(&resets), "{resets}");
    }
}
