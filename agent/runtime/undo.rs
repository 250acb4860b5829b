//! Undo for a multi-step operation: each step that changes the host registers its mirror; if the
//! operation fails, the mirrors run in reverse order, so nothing half-made is left behind.

pub struct Undo {
    steps: Vec<(String, Box<dyn FnOnce() + Send>)>,
}

impl Undo {
    pub fn new() -> Self {
        Undo { steps: Vec::new() }
    }

    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() + Send + 'static) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// The operation succeeded: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            tracing::debug!("undo: {what}");
            step();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn runs_mirrors_in_reverse_unless_committed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut undo = Undo::new();
            for step in 1..=3 {
                let log = log.clone();
                undo.push(format!("step {step}"), move || {
                    log.lock().unwrap().push(step)
                });
            }
        }
        assert_eq!(*log.lock().unwrap(), vec![3, 2, 1]);
        let mut undo = Undo::new();
        let kept = log.clone();
        undo.push("never", move || kept.lock().unwrap().push(99));
        undo.commit();
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
