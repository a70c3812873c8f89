//! One bug never ends the process: a panic while answering one request becomes that request's
//! `500` JSON answer, and a panic while serving one connection (a body being streamed) closes
//! that connection — each counted in `floodgate_panics_total` and logged — while every other
//! connection and the counters go on. The release build unwinds (`panic = "unwind"`) so a panic
//! can be caught at all; catching costs nothing on the path that does not panic.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::{Context, Poll};

/// Runs `fut` to completion; `Err` carries the panic's message if it panicked instead.
///
/// Unwind safety: what a request holds across a panic is its own (dropped while unwinding:
/// slots and permits are RAII guards) or shared state behind atomics and mutexes whose users
/// recover a poisoned lock, so nothing is left half-updated for the next request.
pub fn contained<F: Future>(fut: F) -> Contained<F> {
    Contained { fut }
}

pin_project_lite::pin_project! {
    /// A future whose panics are caught ([`contained`]). A struct, not an `async fn`: an async
    /// fn keeps its argument and the pinned copy it polls side by side, twice the size of the
    /// request's whole future, which the listener's every request then moves.
    pub struct Contained<F> {
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_contained(self.project().fut, cx)
    }
}

/// Polls `fut` once, catching a panic; `Err` carries the panic's message.
pub fn poll_contained<F: Future>(
    fut: std::pin::Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, String>> {
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(payload) => Poll::Ready(Err(message(payload.as_ref()))),
    }
}

/// The text a panic was raised with (`panic!("...")`), or a placeholder.
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_gives_its_message_and_others_their_output() {
        assert_eq!(contained(async { 7 }).await, Ok(7));
        let boom = contained(async {
            tokio::task::yield_now().await;
            panic!("boom {}", 1);
        });
        assert_eq!(boom.await, Err::<(), _>("boom 1".to_owned()));
    }
}
