#include "gateway/server.hpp"

#include <cstdlib>

#include <pthread.h>
#include <sys/resource.h>

#include <iostream>
#include <map>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "config/loader.hpp"
#include "gateway/listener.hpp"
#include "gateway/shared_state.hpp"
#include "gateway/tls_server.hpp"
#include "net/log.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
using clock_type = std::chrono::steady_clock;

int thread_count(const config::gateway_config& cfg) {
    return static_cast<int>(cfg.worker_threads ? cfg.worker_threads : std::max(1u, std::thread::hardware_concurrency()));
}

// limits.max_connections, lowered so that client connections can never take the descriptors
// the upstream pools, listeners and logs need. The soft RLIMIT_NOFILE is raised to the hard
// one first, as nginx and HAProxy do.
std::size_t connection_cap(const config::gateway_config& cfg) {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return cfg.limits.max_connections;
    if (lim.rlim_cur < lim.rlim_max) {
        rlimit raised{lim.rlim_max, lim.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
    }
    if (lim.rlim_cur == RLIM_INFINITY) return cfg.limits.max_connections;
    // Listeners, epoll, timers, logs, the config file, a CA file, and the admin connections.
    std::size_t reserve = 64 + max_admin_connections;
    for (const auto& u : cfg.upstreams) reserve += u.max_connections;
    const std::size_t fds = static_cast<std::size_t>(lim.rlim_cur);
    const std::size_t room = fds > reserve + 1 ? fds - reserve : 1;
    if (cfg.limits.max_connections <= room) return cfg.limits.max_connections;
    log_line("warn", "limits.max_connections lowered to fit the file descriptor limit",
             {{"max_connections", cfg.limits.max_connections}, {"lowered_to", room}, {"nofile", fds},
              {"reserved_for_upstreams_and_process", reserve}});
    return room;
}

void apply_logging(const config::gateway_config& cfg) {
    logging().level = level_number(cfg.logging.level);
    logging().access_log = cfg.logging.access_log;
}

// One worker thread: its io_context (hint 1: one thread runs it) and the guard that keeps it
// running until the drain ends.
struct shard {
    // execution_context::shutdown() (destroys every pending handler; the services stay until
    // the destructor) is protected; impl's destructor calls it on every shard before any goes.
    struct context : net::io_context {
        using io_context::io_context;
        using execution_context::shutdown;
    };
    context ioc{1};
    net::executor_work_guard<net::io_context::executor_type> work = net::make_work_guard(ioc);
};

std::vector<std::unique_ptr<shard>> make_shards(const config::gateway_config& cfg) {
    std::vector<std::unique_ptr<shard>> out;
    for (int i = 0; i < thread_count(cfg); ++i) out.push_back(std::make_unique<shard>());
    return out;
}

struct server::impl {
    explicit impl(std::shared_ptr<const config::gateway_config> c)
        : shards(make_shards(*c)),
          control(net::make_strand(shards.front()->ioc)),
          initial(std::move(c)),
          drain_timer(control),
          signals(control) {
        std::vector<shard_executor> executors;
        for (auto& s : shards) executors.push_back(s->ioc.get_executor());
        state = std::make_shared<shared_state>(metrics, std::move(executors));
    }

    std::shared_ptr<const runtime> build_runtime(std::shared_ptr<const config::gateway_config> c) {
        auto rt = std::make_shared<runtime>(std::move(c));
        // First: certificate files that no longer load refuse the whole reload.
        if (rt->config->listen_tls.enabled) rt->tls = make_server_tls_context(rt->config->listen_tls);
        std::erase_if(built, [](const auto& w) { return w.expired(); });
        built.push_back(rt);
        for (const auto& u : rt->config->upstreams)
            rt->upstreams.emplace(u.name, std::make_shared<upstream_pool>(state->shards, u, state->budget));
        // One concurrency limit per upstream, shared by its coalesce routes; a route that pins
        // max_concurrent_batches has its own.
        std::map<std::string, std::shared_ptr<coalescer::batch_slots>> shared_slots;
        for (const auto& u : rt->config->upstreams) {
            const auto& c = u.concurrency;
            coalescer::limit_settings ls{.initial = c.initial, .min = c.min, .max = c.max};
            shared_slots.emplace(u.name, std::make_shared<coalescer::batch_slots>(ls, &metrics.limiter(u.name, "*")));
        }
        for (const auto& r : rt->config->routes) {
            route_handles& h = rt->handles[&r];
            h.metrics = &metrics.route(r.name);  // every route shows in /metrics from the start
            if (!r.upstream.empty()) h.upstream_metrics = &metrics.upstream(r.upstream, r.name);
            if (r.mode != config::route_mode::coalesce) continue;
            const bool shadow = r.coalesce.shadow;
            if (shadow) h.shadow_metrics = &metrics.shadow_route(r.name);
            std::shared_ptr<coalescer::batch_slots> slots;
            if (r.coalesce.max_concurrent_batches)
                slots = std::make_shared<coalescer::batch_slots>(
                    coalescer::limit_settings::fixed(r.coalesce.max_concurrent_batches),
                    shadow ? nullptr : &metrics.limiter(r.upstream, r.name));
            else if (shadow) {
                // A limit like the upstream's, of its own: the calls it would make take no slot
                // from the live routes, and no gauge shows it.
                const auto& c = rt->config->find_upstream(r.upstream)->concurrency;
                slots = std::make_shared<coalescer::batch_slots>(
                    coalescer::limit_settings{.initial = c.initial, .min = c.min, .max = c.max}, nullptr);
            } else
                slots = shared_slots.at(r.upstream);
            // One batcher per shard; they share the route's slots and its count of waiting callers.
            auto load = std::make_shared<coalescer::route_load>();
            auto& per_shard = rt->batchers[r.name];
            for (auto& s : shards)
                per_shard.push_back(std::make_shared<coalescer::batcher>(
                    s->ioc.get_executor(), rt->config, r, rt->upstreams.at(r.upstream), slots, metrics, load,
                    shadow ? coalescer::batcher_mode::shadow : coalescer::batcher_mode::live));
        }
        return rt;
    }

    // What a config sets for the whole process, at start and on every accepted reload.
    void apply_process_settings(const config::gateway_config& cfg) {
        apply_logging(cfg);
        state->max_connections = connection_cap(cfg);
        state->budget.set_limit(cfg.limits.max_buffered_bytes);
    }

    // Once the threads are gone: break the cycles that callers still queued at the drain
    // deadline form with the batchers and pools of every snapshot, retired ones included.
    void abandon_queued() {
        for (const auto& w : built)
            if (auto rt = w.lock()) {
                for (auto& [name, per_shard] : rt->batchers)
                    for (auto& b : per_shard) b->abandon();
                for (auto& [name, p] : rt->upstreams) p->abandon();
            }
    }

    static void drain_batchers(const runtime& rt) {
        for (auto& [name, per_shard] : rt.batchers)
            for (auto& b : per_shard) b->drain();
    }

    bool traffic_stopped() const {
        for (auto& l : traffic)
            if (!l->stopped()) return false;
        return true;
    }

    void retire(const std::shared_ptr<const runtime>& old) {
        if (!old) return;
        drain_batchers(*old);
        for (auto& [name, p] : old->upstreams) p->close_idle();
    }

    void begin_shutdown() {
        if (stopping) return;
        stopping = true;
        state->draining = true;
        log_line("info", "draining", {{"in_flight", state->active_requests.load()}});
        for (auto& l : traffic) l->stop();
        // Keep the admin listener until the end: /readyz now says "draining".
        auto rt = state->current();
        drain_batchers(*rt);
        drain_deadline = clock_type::now() + rt->config->limits.drain_timeout;
        poll_drain();
    }

    void poll_drain() {
        const auto now = clock_type::now();
        if (state->active_requests.load() != 0 && now >= drain_deadline && !stragglers_answered) {
            // Whoever is still waiting gets a 503 rather than a closed socket; then a short
            // grace period lets those answers reach the wire.
            stragglers_answered = true;
            log_line("warn", "drain timeout reached; answering the rest 503",
                     {{"in_flight", state->active_requests.load()}});
            for (auto& c : state->connections()) c->answer_shutting_down();
            drain_deadline = now + std::chrono::seconds(1);
        }
        // Not before the listener has handed over its backlog: those requests count as in flight.
        const bool quiet = state->active_requests.load() == 0 && traffic_stopped();
        if (quiet || (stragglers_answered && now >= drain_deadline)) {
            if (admin) admin->stop();
            for (auto& [name, p] : state->current()->upstreams) p->close_idle();
            signals.cancel();
            for (auto& s : shards) {
                s->work.reset();
                s->ioc.stop();
            }
            return;
        }
        drain_timer.expires_after(std::chrono::milliseconds(5));
        drain_timer.async_wait([this](boost::system::error_code ec) {
            if (!ec) poll_drain();
        });
    }

    void wait_signal() {
        signals.async_wait([this](boost::system::error_code ec, int sig) {
            if (ec) return;
            if (sig == SIGHUP) {
                try {
                    auto next = std::make_shared<const config::gateway_config>(config::load_file(config_path));
                    apply(std::move(next));
                    metrics.reloads(true).Increment();
                    log_line("info", "config reloaded", {{"file", config_path}});
                } catch (const config::config_error& e) {
                    metrics.reloads(false).Increment();
                    for (const auto& line : e.errors())
                        log_line("error", "config reload rejected; keeping the old config", {{"error", line}});
                }
                wait_signal();
                return;
            }
            begin_shutdown();
        });
    }

    // Builds everything first: a config refused here (a CA file OpenSSL cannot load) changes
    // nothing, not even the log level.
    void apply(std::shared_ptr<const config::gateway_config> next) {
        auto rt = build_runtime(next);
        apply_process_settings(*next);
        auto old = state->current();
        if (old) {
            // Sockets and threads are set up once: say so rather than pretend.
            const auto& was = *old->config;
            auto same = [](const config::endpoint& a, const config::endpoint& b) { return a.host == b.host && a.port == b.port; };
            for (auto [changed, key] : {std::pair{!same(was.listen, next->listen), "listen"},
                                        std::pair{!same(was.admin_listen, next->admin_listen), "admin_listen"},
                                        std::pair{was.worker_threads != next->worker_threads, "worker_threads"}})
                if (changed)
                    log_line("warn", "reload cannot change this key; restart to apply it (the rest of the file applies)",
                             {{"key", key}});
        }
        state->replace(rt);
        retire(old);
    }

    // The io_contexts go one after another, but what their pending handlers hold spans them
    // all: a session of shard 2 can hold the last reference to a runtime whose batchers own a
    // timer on shard 0 and whose pools own sockets of every shard. So first every shard drops
    // its handlers (sessions, runtimes, batchers and pools are freed while every shard's
    // services still exist), and only then is any destroyed. A second round drops what those
    // destructors posted to a shard already shut down (asio would otherwise free it inside that
    // shard's destructor, after its reactor). Shutting down again is harmless.
    ~impl() {
        for (int round = 0; round < 2; ++round)
            for (auto& s : shards) s->ioc.shutdown();
    }

    // Declared first so it is destroyed last: sessions released with the io_contexts'
    // pending handlers still update metrics on their way out.
    metrics::registry metrics;
    std::vector<std::unique_ptr<shard>> shards;  // one per worker thread
    // Shutdown, reload and signals run here (on shard 0), one at a time.
    net::strand<net::io_context::executor_type> control;
    std::shared_ptr<const config::gateway_config> initial;
    std::shared_ptr<shared_state> state;
    std::vector<std::shared_ptr<listener>> traffic;  // one per shard, on one port
    std::shared_ptr<listener> admin;
    std::vector<std::thread> threads;
    net::steady_timer drain_timer;
    net::signal_set signals;
    std::string config_path;
    std::vector<std::weak_ptr<const runtime>> built;  // every snapshot, for abandon_queued()
    clock_type::time_point drain_deadline{};
    bool stopping = false;             // touched only on the control strand
    bool stragglers_answered = false;  // touched only on the control strand
};

server::server(std::shared_ptr<const config::gateway_config> config) : impl_(std::make_unique<impl>(std::move(config))) {}

server::~server() {
    if (!impl_->threads.empty()) {
        shutdown();
        wait();
    }
}

void server::start() {
    auto& i = *impl_;
    i.apply_process_settings(*i.initial);
    i.state->replace(i.build_runtime(i.initial));
    const auto& cfg = *i.initial;
    // Each shard accepts on the port the first bound (the real one when configured as 0).
    const std::size_t n = i.shards.size();
    for (std::size_t t = 0; t < n; ++t) {
        config::endpoint where = cfg.listen;
        if (t > 0) where.port = i.traffic.front()->port();
        i.traffic.push_back(std::make_shared<listener>(i.shards[t]->ioc, where, listener_role::traffic, i.state, n > 1, t));
    }
    i.admin = std::make_shared<listener>(i.shards.front()->ioc, cfg.admin_listen, listener_role::admin, i.state);
    for (auto& l : i.traffic) l->run();
    i.admin->run();
    for (std::size_t t = 0; t < n; ++t)
        i.threads.emplace_back([&i, t] {
            set_current_shard(t);
            // "bg-worker-N" (at most 15 characters, the kernel's limit) in /proc/PID/task/TID/comm,
            // top -H and gdb, so tools (bench/run.sh) can tell the worker threads apart.
            pthread_setname_np(pthread_self(), ("bg-worker-" + std::to_string(t)).substr(0, 15).c_str());
            // Last resort: a handler that throws must not take every other caller down with
            // the process. The caller it belonged to is answered by its session's deadline.
            for (;;) {
                try {
                    i.shards[t]->ioc.run();
                    return;
                } catch (const std::exception& e) {
                    log_line("error", "unhandled exception in a request handler", {{"error", e.what()}});
                }
            }
        });
    i.state->ready = true;
    nlohmann::json fields{{"listen", cfg.listen.host + ":" + std::to_string(port())},
                          {"admin", cfg.admin_listen.host + ":" + std::to_string(admin_port())},
                          {"routes", cfg.routes.size()},
                          {"threads", n},
                          {"config", cfg.source_file}};
    // What glibc's allocator runs with (gateway/main.cpp sets its cache size).
    if (const char* tunables = std::getenv("GLIBC_TUNABLES")) fields["glibc_tunables"] = tunables;
    log_line("info", "batchgate started", std::move(fields));
}

void server::wait() {
    for (auto& t : impl_->threads)
        if (t.joinable()) t.join();
    if (!impl_->threads.empty()) impl_->abandon_queued();
    impl_->threads.clear();
}

void server::handle_signals(std::string config_path) {
    auto& i = *impl_;
    i.config_path = std::move(config_path);
    i.signals.add(SIGTERM);
    i.signals.add(SIGINT);
    i.signals.add(SIGHUP);
    net::post(i.control, [&i] { i.wait_signal(); });
}

void server::shutdown() {
    net::post(impl_->control, [i = impl_.get()] { i->begin_shutdown(); });
}

void server::reload(std::shared_ptr<const config::gateway_config> next) {
    net::post(impl_->control, [i = impl_.get(), next = std::move(next)]() mutable { i->apply(std::move(next)); });
}

unsigned short server::port() const { return impl_->traffic.empty() ? 0 : impl_->traffic.front()->port(); }
std::size_t server::worker_threads() const { return impl_->shards.size(); }
unsigned short server::admin_port() const { return impl_->admin ? impl_->admin->port() : 0; }
metrics::registry& server::metrics() { return impl_->metrics; }

}  // namespace batchgate::gateway
