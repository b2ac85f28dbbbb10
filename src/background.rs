//! Background threads that must not take CPU from the windows' path.

/// Lowers the calling thread's CPU priority to `nice` (0 = normal, 19 =
/// lowest; Linux threads are tasks with their own nice value, setpriority(2)
/// on the thread id), so that under contention the scheduler gives its time
/// to the engine workers and the pipeline task first.
///
/// # Errors
/// The OS error when the priority cannot be changed (the thread then keeps
/// its priority: callers log it and go on).
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        // SAFETY (all three): getpriority on this thread's own id.
        let own = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = own();
        let niced = std::thread::spawn(move || {
            super::lower_this_thread(19).unwrap();
            own()
        })
        .join()
        .unwrap();
        assert_eq!(niced, 19);
        assert_eq!(own(), before, "the caller's thread kept its priority");
    }
}
