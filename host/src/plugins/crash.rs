//! Fatal signals name the plugin whose code was running. Plugins run inside our process, so a
//! segfault in one ends the whole server; until plugins run out of process, the least we owe
//! the person reading the log is which plugin did it. The process still dies of the signal
//! (a non-zero exit), so a supervisor (systemd, Docker, launchd) restarts it.
//!
//! A signal handler may only do async-signal-safe work, so everything it prints is prepared
//! when a library loads: the library's address range (from /proc/self/maps) and a message
//! naming it. The handler compares the faulting instruction's address with those ranges,
//! `write(2)`s the messages, puts back the handler it replaced (Rust's stack-overflow
//! reporter, or the default) and returns: the faulting instruction runs again under that
//! handler and the process dies as it would have. A fault outside every plugin's code (a
//! plugin's `abort()` lands in libc) is reported with the thread's name and the plugins
//! loaded, since a plugin's own threads are the usual place.

use std::path::Path;

/// Call once at start-up, before any plugin loads. Linux only; a no-op elsewhere.
pub fn install_fatal_signal_report() {
    #[cfg(target_os = "linux")]
    imp::install();
}

/// Records a loaded library's address range under its backend name.
pub(crate) fn register(name: &str, path: &Path) {
    #[cfg(target_os = "linux")]
    imp::register(name, path);
    #[cfg(not(target_os = "linux"))]
    let _ = (name, path);
}

#[cfg(target_os = "linux")]
mod imp {
    use std::path::Path;
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};

    /// More plugin libraries than anyone loads; later ones are not named.
    const MAX_LIBRARIES: usize = 64;
    const SIGNALS: [(libc::c_int, &str); 5] = [
        (libc::SIGSEGV, "SIGSEGV (invalid memory access)"),
        (libc::SIGBUS, "SIGBUS (bus error)"),
        (libc::SIGILL, "SIGILL (illegal instruction)"),
        (libc::SIGFPE, "SIGFPE (arithmetic fault)"),
        (libc::SIGABRT, "SIGABRT (abort)"),
    ];

    /// One library: its mapped range and its message, written once, read by the handler.
    struct Library {
        start: AtomicUsize,
        end: AtomicUsize,
        message: AtomicPtr<u8>,
        message_len: AtomicUsize,
    }

    #[allow(clippy::declare_interior_mutable_const)] // a template for the array below
    const EMPTY: Library = Library {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        message: AtomicPtr::new(std::ptr::null_mut()),
        message_len: AtomicUsize::new(0),
    };
    static LIBRARIES: [Library; MAX_LIBRARIES] = [EMPTY; MAX_LIBRARIES];
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    /// " (plugins loaded: a (path), b (path))", rebuilt at each registration; old ones leak.
    static LOADED: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static LOADED_LEN: AtomicUsize = AtomicUsize::new(0);
    static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    /// The handlers we replaced, by signal, to put back before returning.
    static PREVIOUS: OnceLock<Vec<(libc::c_int, libc::sigaction)>> = OnceLock::new();

    pub fn install() {
        PREVIOUS.get_or_init(|| {
            SIGNALS
                .iter()
                .filter_map(|&(signal, _)| replace_handler(signal).map(|old| (signal, old)))
                .collect()
        });
    }

    fn replace_handler(signal: libc::c_int) -> Option<libc::sigaction> {
        // SAFETY: sigaction with a zeroed struct, our handler and SA_SIGINFO is the documented
        // way to install a three-argument handler; `old` receives the previous action.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(_, _, _) as libc::sighandler_t;
            // SA_ONSTACK: Rust gives its threads an alternate stack, so a stack overflow
            // still reaches a handler.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            (libc::sigaction(signal, &action, &mut old) == 0).then_some(old)
        }
    }

    pub fn register(name: &str, path: &Path) {
        let Some((start, end)) = mapped_range(path) else {
            tracing::debug!("no mapping found for {}", path.display());
            return;
        };
        let index = COUNT.load(Ordering::Acquire);
        if index >= MAX_LIBRARIES {
            return;
        }
        let message = format!(" in the code of plugin `{name}` ({})", path.display());
        let library = &LIBRARIES[index];
        let (ptr, len) = leak(message);
        library.start.store(start, Ordering::Relaxed);
        library.end.store(end, Ordering::Relaxed);
        library.message.store(ptr, Ordering::Relaxed);
        library.message_len.store(len, Ordering::Relaxed);
        // Published last: the handler reads only entries below COUNT.
        COUNT.store(index + 1, Ordering::Release);

        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        names.push(format!("{name} ({})", path.display()));
        let (ptr, len) = leak(format!(" (plugins loaded: {})", names.join(", ")));
        LOADED_LEN.store(0, Ordering::Release);
        LOADED.store(ptr, Ordering::Release);
        LOADED_LEN.store(len, Ordering::Release);
    }

    fn leak(text: String) -> (*mut u8, usize) {
        let bytes: &'static mut [u8] = Box::leak(text.into_bytes().into_boxed_slice());
        (bytes.as_mut_ptr(), bytes.len())
    }

    /// The lowest start and highest end of the mappings of `path` in /proc/self/maps.
    fn mapped_range(path: &Path) -> Option<(usize, usize)> {
        let path = std::fs::canonicalize(path).ok()?;
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let wanted = path.to_str()?;
        maps.lines()
            .filter(|line| line.ends_with(wanted))
            .filter_map(|line| {
                let (start, end) = line.split_whitespace().next()?.split_once('-')?;
                Some((
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                ))
            })
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
    }

    extern "C" fn handler(
        signal: libc::c_int,
        _info: *mut libc::siginfo_t,
        context: *mut libc::c_void,
    ) {
        let name = SIGNALS
            .iter()
            .find(|s| s.0 == signal)
            .map_or("a fatal signal", |s| s.1);
        write_all(b"\nllmlocal: fatal signal ");
        write_all(name.as_bytes());
        match library_at(instruction_address(context)) {
            Some(message) => write_all(message),
            None => {
                write_all(b" outside every plugin's code, on thread `");
                write_thread_name();
                write_all(b"`");
                write_loaded();
            }
        }
        write_all(
            b"; the process stops now (run it under a supervisor that restarts it; \
              report the crash to the plugin's authors)\n",
        );
        restore_previous(signal);
    }

    fn library_at(address: usize) -> Option<&'static [u8]> {
        let count = COUNT.load(Ordering::Acquire);
        LIBRARIES[..count].iter().find_map(|library| {
            let inside = address >= library.start.load(Ordering::Relaxed)
                && address < library.end.load(Ordering::Relaxed);
            let ptr = library.message.load(Ordering::Relaxed);
            // SAFETY: ptr/len describe a leaked, never-freed byte slice written before COUNT.
            (inside && !ptr.is_null()).then(|| unsafe {
                std::slice::from_raw_parts(ptr, library.message_len.load(Ordering::Relaxed))
            })
        })
    }

    fn write_loaded() {
        let len = LOADED_LEN.load(Ordering::Acquire);
        let ptr = LOADED.load(Ordering::Acquire);
        if len > 0 && !ptr.is_null() {
            // SAFETY: a leaked, never-freed slice of at least `len` bytes (the length is
            // cleared before a new pointer is published, so it never exceeds the pointer's).
            write_all(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
    }

    /// The program counter at the fault, from the signal's machine context.
    fn instruction_address(context: *mut libc::c_void) -> usize {
        if context.is_null() {
            return 0;
        }
        // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let context = &*(context as *const libc::ucontext_t);
            context.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            let context = &*(context as *const libc::ucontext_t);
            context.uc_mcontext.pc as usize
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        0
    }

    fn write_thread_name() {
        let mut name = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the buffer.
        let ok = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        write_all(if ok { &name[..len] } else { b"?" });
    }

    fn write_all(mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: write(2) is async-signal-safe; the slice is valid for its length.
            let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }

    /// Puts back the handler we replaced, or the default one.
    fn restore_previous(signal: libc::c_int) {
        let previous = PREVIOUS
            .get()
            .and_then(|all| all.iter().find(|(s, _)| *s == signal));
        // SAFETY: re-installing an action sigaction handed us, or SIG_DFL.
        unsafe {
            match previous {
                Some((_, old)) => {
                    libc::sigaction(signal, old, std::ptr::null_mut());
                }
                None => {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
        }
    }
}
