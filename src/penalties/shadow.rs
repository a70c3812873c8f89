//! What a penalty in shadow mode would have done to a job that went through untouched: noted on
//! the job's [`Marks`](super::Marks), counted in a metric and written in the access log, so that
//! an operator sees what turning the penalty on would change before it changes anything.

/// What a penalty's action would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowEffect {
    /// Refused with 429 (`block`, or `reject` for a relax job).
    Refused,
    /// Forwarded marked "no refund" (`flag`).
    Flagged,
    /// Forwarded marked with a cost multiplier (`surcharge`).
    Surcharged,
}

impl ShadowEffect {
    /// Its name: a metric label, a word of the access log.
    pub fn name(self) -> &'static str {
        match self {
            ShadowEffect::Refused => "refused",
            ShadowEffect::Flagged => "flagged",
            ShadowEffect::Surcharged => "surcharged",
        }
    }
}

/// What the penalties in shadow mode would have done to one admitted job; empty for nearly
/// every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shadowed {
    /// The incorrect-task allowance was used up: what its action would have done.
    pub incorrect: Option<ShadowEffect>,
    /// The relax allowance was used up by a relax job: what its action would have done.
    pub relax: Option<ShadowEffect>,
}

impl Shadowed {
    pub fn is_empty(&self) -> bool {
        self.incorrect.is_none() && self.relax.is_none()
    }

    /// Each penalty that would have acted, by its name (`incorrect_tasks`, `relax`), with what
    /// it would have done.
    pub fn effects(&self) -> impl Iterator<Item = (&'static str, ShadowEffect)> {
        let incorrect = self.incorrect.map(|e| (super::INCORRECT, e));
        incorrect
            .into_iter()
            .chain(self.relax.map(|e| ("relax", e)))
    }

    /// The access log's word for it, e.g. `relax:surcharged` or
    /// `incorrect_tasks:refused,relax:surcharged`; `None` when nothing would have acted.
    /// From a fixed set, so a line costs no allocation for it.
    pub fn describe(&self) -> Option<&'static str> {
        use ShadowEffect::*;
        Some(match (self.incorrect, self.relax) {
            (None, None) => return None,
            (Some(Refused), None) => "incorrect_tasks:refused",
            (Some(_), None) => "incorrect_tasks:flagged",
            (None, Some(Refused)) => "relax:refused",
            (None, Some(_)) => "relax:surcharged",
            (Some(Refused), Some(Refused)) => "incorrect_tasks:refused,relax:refused",
            (Some(Refused), Some(_)) => "incorrect_tasks:refused,relax:surcharged",
            (Some(_), Some(Refused)) => "incorrect_tasks:flagged,relax:refused",
            (Some(_), Some(_)) => "incorrect_tasks:flagged,relax:surcharged",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_names_each_penalty_and_what_it_would_have_done() {
        let effects = [
            None,
            Some(ShadowEffect::Refused),
            Some(ShadowEffect::Flagged),
            Some(ShadowEffect::Surcharged),
        ];
        for incorrect in effects
            .into_iter()
            .filter(|e| *e != Some(ShadowEffect::Surcharged))
        {
            for relax in effects
                .into_iter()
                .filter(|e| *e != Some(ShadowEffect::Flagged))
            {
                let s = Shadowed { incorrect, relax };
                let joined: Vec<String> = s
                    .effects()
                    .map(|(penalty, e)| format!("{penalty}:{}", e.name()))
                    .collect();
                let expected = (!joined.is_empty()).then(|| joined.join(","));
                assert_eq!(s.describe().map(str::to_owned), expected, "{s:?}");
                assert_eq!(s.is_empty(), expected.is_none());
            }
        }
    }
}
