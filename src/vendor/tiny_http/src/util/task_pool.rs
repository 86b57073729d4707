use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
    // swapd: the stack size of the pool's threads (`None`: the standard library's default).
    stack_size: Option<usize>,
}

struct Sharing {
    // list of the tasks to be done by worker threads
    todo: Mutex<VecDeque<Box<dyn FnMut() + Send>>>,

    // condvar that will be notified whenever a task is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl TaskPool {
    pub fn new(stack_size: Option<usize>) -> TaskPool {
        let pool = TaskPool {
            stack_size,
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
            }),
        };

        for _ in 0..MIN_THREADS {
            pool.add_thread(None)
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is available, spawns a new one.
    pub fn spawn(&self, code: Box<dyn FnMut() + Send>) {
        let mut queue = self.sharing.todo.lock().unwrap();

        // swapd: the original queued the task whenever any thread was waiting, so a burst of
        // connections queued more tasks than there were idle threads, and the surplus waited
        // until some other connection closed (a keep-alive or streaming client could hold
        // them back indefinitely). Both counts change only under this lock, so a task is
        // queued only for a thread that is idle and not yet claimed.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) > queue.len() {
            queue.push_back(code);
            self.sharing.condvar.notify_one();
        } else {
            drop(queue);
            self.add_thread(Some(code));
        }
    }

    fn add_thread(&self, initial_fn: Option<Box<dyn FnMut() + Send>>) {
        let sharing = self.sharing.clone();

        let mut builder = thread::Builder::new();
        if let Some(size) = self.stack_size {
            builder = builder.stack_size(size).name("http".to_string());
        }
        // swapd: a thread that cannot be started drops its task (the connection is closed)
        // instead of panicking the accept thread.
        let spawned = builder.spawn(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            if let Some(mut f) = initial_fn {
                f();
            }

            loop {
                let mut task: Box<dyn FnMut() + Send> = {
                    let mut todo = sharing.todo.lock().unwrap();

                    let task;
                    loop {
                        if let Some(poped_task) = todo.pop_front() {
                            task = poped_task;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing.condvar.wait(todo).unwrap();
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap();
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            drop(todo);
                            release_stack_pages();
                            return;
                        }
                    }

                    task
                };

                task();
            }
        });
        if let Err(error) = spawned {
            log::error!("cannot start a connection thread: {}", error);
        }
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

/// swapd: glibc keeps the stacks of exited threads (up to 40 MiB) for reuse, with every page
/// they touched still resident, so after a burst of connections swapd's RSS stayed megabytes
/// above idle. An exiting pool thread therefore hands its stack pages below the current frame
/// back to the kernel; a thread that reuses the stack gets fresh zero pages on demand.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // swapd: libc calls, see the SAFETY comment.
fn release_stack_pages() {
    const PAGE: usize = 4096;
    // SAFETY: pthread_getattr_np/pthread_attr_getstack fill a local attribute object for this
    // thread, which is destroyed afterwards. The madvise range lies inside this thread's own
    // stack and ends two pages below the current frame: everything in it is dead data of frames
    // that have returned, and MADV_DONTNEED makes the pages read as zero if touched again.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let found = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if !found {
            return;
        }
        let marker = 0u8;
        let current = std::ptr::addr_of!(marker) as usize;
        let start = (low as usize + PAGE - 1) & !(PAGE - 1);
        let end = (current & !(PAGE - 1)).saturating_sub(2 * PAGE);
        if end > start && current < low as usize + size {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn release_stack_pages() {}
