//! The build really uses the patched `polling` and `async-io` in `vendor/`: each test
//! here passes on the patched crate and fails on the crates.io release it patches, so
//! a dependency bump that silently drops a patch (cargo then warns "patch was not used"
//! and builds the release) fails the suite. `vendor/check` tests the same from
//! `cargo tree`; this tests what the binary does.
//!
//! One test binary of its own: it counts this process's allocations and reads its file
//! descriptors, which other tests running beside it would disturb.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Records the largest allocation made while `COUNTING` is set.
struct Largest;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's layout goes to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The tests share the process's descriptors and allocation counter: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// async-io's patch: a registered socket's `Source` (in its `Arc`) is 120 bytes, not
/// the release's 216, because the slab of `readable()`/`writable()` wakers is made on
/// first use and reactor ticks keep 32 bits.
#[test]
fn a_registered_socket_costs_the_patched_reactor_source() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The reactor's table of sources doubles at 64 entries; at 101 it has room.
    let warm: Vec<_> = (0..100)
        .map(|_| smol::Async::new(TcpStream::connect(addr).unwrap()).unwrap())
        .collect();
    let stream = TcpStream::connect(addr).unwrap();
    LARGEST.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let registered = smol::Async::new(stream).unwrap();
    COUNTING.store(false, Ordering::SeqCst);
    let largest = LARGEST.load(Ordering::SeqCst);
    drop((registered, warm));
    // Both sizes depend on the target's layout: between them, with room either side.
    assert!(
        largest < 180,
        "registering a socket allocated {largest} bytes at most: the patched Source is \
         120 bytes with its Arc on x86_64, the release's 216 (is vendor/async-io in use?)"
    );
}

/// The descriptor of the poller's timerfd, found among those `Poller::new` opened.
fn timerfd_of(before: &[String]) -> Option<String> {
    let fds = open_fds();
    fds.into_iter().find(|fd| {
        !before.contains(fd)
            && std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|target| target.to_string_lossy().contains("timerfd"))
    })
}

fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Whether the timerfd is armed: `it_value` in its fdinfo is not `(0, 0)`.
fn is_armed(fd: &str) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let value = info
        .lines()
        .find_map(|l| l.strip_prefix("it_value:"))
        .expect("a timerfd's fdinfo has it_value");
    value.trim() != "(0, 0)"
}

/// polling's patch: a wait of 100 ms or more waits in `epoll_pwait` itself, without
/// arming the timerfd (the release arms it for every wait with a timeout).
#[test]
fn a_long_wait_leaves_the_pollers_timer_disarmed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_fds();
    let poller = std::sync::Arc::new(polling::Poller::new().unwrap());
    let timer = timerfd_of(&before).expect("the poller has a timerfd");
    let waiter = {
        let poller = poller.clone();
        std::thread::spawn(move || {
            let mut events = polling::Events::new();
            poller
                .wait(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let armed = is_armed(&timer);
    poller.notify().unwrap();
    waiter.join().unwrap();
    assert!(
        !armed,
        "a 5 s wait armed the timerfd: the release's behaviour (is vendor/polling in use?)"
    );
}
