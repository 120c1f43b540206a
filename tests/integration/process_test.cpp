// The real batchgate binary as an operator runs it: exit codes, SIGHUP reload (good and bad
// files), SIGTERM drain with callers waiting.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include "tests/integration/gateway_process.hpp"
#include "tests/integration/harness.hpp"
#include "tests/test_certs.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_upstream;

namespace {

struct run_result {
    int exit_code = -1;
    std::string out, err;
};

// Runs the binary to completion (for the short-lived command-line modes).
run_result run(const std::vector<std::string>& args) {
    int out_pipe[2], err_pipe[2];
    EXPECT_EQ(pipe(out_pipe), 0);
    EXPECT_EQ(pipe(err_pipe), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        close(out_pipe[0]);
        close(err_pipe[0]);
        std::vector<char*> argv{const_cast<char*>(BATCHGATE_BIN)};
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv(BATCHGATE_BIN, argv.data());
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    run_result r;
    auto drain = [](int fd, std::string& into) {
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) into.append(buf, static_cast<std::size_t>(n));
        close(fd);
    };
    std::thread t([&] { drain(out_pipe[0], r.out); });
    drain(err_pipe[0], r.err);
    t.join();
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

std::string config_text(unsigned short upstream, const std::string& wait, const std::string& path = "/users/{id}") {
    return fill(R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
limits: {drain_timeout: 5s}
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}"}
routes:
  - name: users
    match: {method: GET, path: "{{PATH}}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: {{WAIT}}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
)",
                {{"PORT", std::to_string(upstream)}, {"WAIT", wait}, {"PATH", path}});
}

std::string write_file(const std::string& name, const std::string& text) {
    auto dir = std::filesystem::temp_directory_path() / ("batchgate-proc-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    auto path = (dir / name).string();
    std::ofstream(path) << text;
    return path;
}

}  // namespace

TEST(Process, CommandLineExitCodes) {
    auto version = run({"--version"});
    EXPECT_EQ(version.exit_code, 0);
    EXPECT_NE(version.out.find("batchgate "), std::string::npos);
    auto help = run({"--help"});
    EXPECT_EQ(help.exit_code, 0);
    EXPECT_NE(help.out.find("--check-config"), std::string::npos);
    auto bad_flag = run({"--frobnicate"});
    EXPECT_EQ(bad_flag.exit_code, 2);
    EXPECT_NE(bad_flag.err.find("unknown argument"), std::string::npos);
    EXPECT_EQ(run({}).exit_code, 2);

    auto good = run({"--check-config", write_file("good.yaml", config_text(9, "5ms"))});
    EXPECT_EQ(good.exit_code, 0) << good.err;
    EXPECT_NE(good.out.find("OK"), std::string::npos);
    auto path = write_file("bad.yaml", config_text(9, "five"));
    auto bad = run({"--check-config", path});
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find(path + ":15:"), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find("routes[0].coalesce.max_wait"), std::string::npos) << bad.err;
    EXPECT_EQ(run({"--check-config", "/nonexistent/file.yaml"}).exit_code, 1);
}

// issue 12: listen_tls files are loaded by --check-config, so a key that does not belong to the
// certificate is reported at its line, as are passthrough settings.
TEST(Process, CheckConfigLoadsListenTlsFilesAndPassthroughSettings) {
    const auto pem = make_certificate();
    const auto cert = write_file("listen-cert.pem", pem.cert);
    const auto key = write_file("listen-key.pem", pem.key);
    const auto other_key = write_file("listen-other-key.pem", make_certificate().key);
    auto text = [&](const std::string& key_path, const std::string& idle) {
        return "listen_tls:\n  cert_chain: " + cert + "\n  key: " + key_path +
               "\nupstreams: {api: {url: \"http://127.0.0.1:9\"}}\n"
               "routes:\n  - name: files\n    match: {prefix: /}\n    upstream: api\n"
               "    passthrough: {max_body: 10MiB, idle_timeout: " + idle + "}\n";
    };
    auto good = run({"--check-config", write_file("listen-good.yaml", text(key, "30s"))});
    EXPECT_EQ(good.exit_code, 0) << good.err;
    const auto path = write_file("listen-bad.yaml", text(other_key, "0"));
    auto bad = run({"--check-config", path});
    EXPECT_EQ(bad.exit_code, 1) << bad.out;
    EXPECT_NE(bad.err.find(path + ":3:8: listen_tls.key: the private key in \"" + other_key +
                           "\" does not match the first certificate in \"" + cert + "\""),
              std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find(path + ":9:50: routes[0].passthrough.idle_timeout: must be greater than 0"),
              std::string::npos) << bad.err;
}

TEST(Process, SighupReloadsAndRejectsABadFileWhileServing) {
    mock_upstream up;
    auto path = write_file("reload.yaml", config_text(up.port(), "1ms"));
    gateway_process gw(path);
    ASSERT_NE(gw.port(), 0);
    EXPECT_EQ(get(gw.port(), "/users/3").status, 200);

    std::ofstream(path) << config_text(up.port(), "5 ms");  // a typo
    gw.signal(SIGHUP);
    std::string rejected = gw.wait_for("config reload rejected");
    EXPECT_NE(rejected.find("routes[0].coalesce.max_wait"), std::string::npos) << rejected;
    EXPECT_NE(rejected.find(path), std::string::npos) << rejected;
    EXPECT_EQ(get(gw.port(), "/users/3").status, 200) << "the old config keeps serving";

    std::ofstream(path) << config_text(up.port(), "1ms", "/people/{id}");
    gw.signal(SIGHUP);
    EXPECT_FALSE(gw.wait_for("config reloaded").empty());
    EXPECT_EQ(get(gw.port(), "/people/4").json()["id"], "4");
    EXPECT_EQ(get(gw.port(), "/users/4").status, 404);
    gw.signal(SIGTERM);
    EXPECT_EQ(gw.wait_exit(), 0);
}

// A CA file with a PEM header but a body OpenSSL cannot read used to pass --check-config and
// then fail the reload after the new file's logging section had already been applied.
TEST(Process, ARejectedReloadChangesNothingNotEvenLogging) {
    mock_upstream up;
    auto path = write_file("reload-logging.yaml", config_text(up.port(), "1ms"));
    gateway_process gw(path, /*capture_stdout=*/true);
    ASSERT_NE(gw.port(), 0);
    EXPECT_EQ(get(gw.port(), "/users/3").status, 200);
    EXPECT_FALSE(gw.next_access_line(2000).empty());

    const std::string ca = write_file("garbage-ca.pem",
                                      "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n");
    std::string bad = config_text(up.port(), "1ms");
    bad.replace(bad.find("upstreams:\n"), 11,
                "logging: {access_log: false, level: error}\nupstreams:\n  secure: {url: \"https://127.0.0.1:1\", tls: {ca_file: " +
                    ca + "}}\n");
    const std::string bad_path = write_file("reload-logging-bad.yaml", bad);
    auto check = run({"--check-config", bad_path});
    EXPECT_EQ(check.exit_code, 1) << check.out;
    EXPECT_NE(check.err.find("upstreams.secure.tls.ca_file: cannot load certificates"), std::string::npos) << check.err;

    std::ofstream(path) << bad;
    gw.signal(SIGHUP);
    auto rejected = gw.wait_for("config reload rejected");
    EXPECT_NE(rejected.find("cannot load certificates"), std::string::npos) << rejected;
    EXPECT_EQ(get(gw.port(), "/users/4").status, 200);
    EXPECT_FALSE(gw.next_access_line(2000).empty()) << "the rejected file turned the access log off";
    gw.signal(SIGTERM);
    EXPECT_EQ(gw.wait_exit(), 0);
}

TEST(Process, SigtermAnswersWaitingCallersAndExitsZero) {
    mock_upstream up;
    gateway_process gw(write_file("drain.yaml", config_text(up.port(), "60s")));
    std::vector<response> out(5);
    std::vector<std::thread> callers;
    for (int i = 0; i < 5; ++i) callers.emplace_back([&, i] { out[i] = get(gw.port(), "/users/" + std::to_string(i + 1)); });
    // Bounded wait until all five wait in the 60 s window: only the drain can flush them.
    auto waiting = [&] {
        const std::string text = get(gw.admin_port(), "/metrics").body;
        return text.find("batchgate_waiting_callers{route=\"users\"} 5") != std::string::npos;
    };
    for (int tries = 0; tries < 500 && !waiting(); ++tries) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(waiting());
    EXPECT_EQ(up.calls().size(), 0u);
    gw.signal(SIGTERM);
    for (auto& t : callers) t.join();
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(out[i].status, 200) << out[i].body;
        EXPECT_EQ(out[i].json()["id"], std::to_string(i + 1));
    }
    EXPECT_EQ(gw.wait_exit(), 0);
}

// Container runtimes capture stdout through a pipe, where stdio buffers by the block: each
// access-log line must reach the pipe when the request is answered, not 4 KiB later.
TEST(Process, AccessLogLinesReachAPipedStdoutAtOnce) {
    mock_upstream up;
    gateway_process gw(write_file("access.yaml", config_text(up.port(), "1ms")), true);
    ASSERT_NE(gw.port(), 0);
    for (int i = 1; i <= 3; ++i) {
        ASSERT_EQ(get(gw.port(), "/users/" + std::to_string(i), {{"X-Request-Id", "req-" + std::to_string(i)}}).status, 200);
        auto line = nlohmann::json::parse(gw.next_access_line(2000), nullptr, false);
        ASSERT_TRUE(line.is_object()) << "no access-log line within 2 s of answer " << i;
        EXPECT_EQ(line["request_id"], "req-" + std::to_string(i));
        EXPECT_EQ(line["status"], 200);
        EXPECT_EQ(line["route"], "users");
    }
}

// listen, admin_listen and worker_threads are bound at start: a reload says it cannot change
// them (and still applies the rest) instead of reporting a silent success.
TEST(Process, ReloadSaysWhichKeysNeedARestart) {
    mock_upstream up;
    auto path = write_file("rebind.yaml", config_text(up.port(), "1ms"));
    gateway_process gw(path);
    ASSERT_NE(gw.port(), 0);
    std::string text = config_text(up.port(), "1ms", "/people/{id}");
    text.replace(text.find("listen: 127.0.0.1:0"), 19, "listen: 127.0.0.1:1");
    std::ofstream(path) << text;
    gw.signal(SIGHUP);
    auto warned = gw.wait_for("reload cannot change");
    EXPECT_NE(warned.find("\"listen\""), std::string::npos) << warned;
    EXPECT_FALSE(gw.wait_for("config reloaded").empty());
    EXPECT_EQ(get(gw.port(), "/people/4").json()["id"], "4") << "the rest of the file applies, on the old socket";
    gw.signal(SIGTERM);
    EXPECT_EQ(gw.wait_exit(), 0);
}

namespace {

// A variable of a running process's environment as it was passed to exec, nullopt when it has
// none. glibc up to 2.38 cuts GLIBC_TUNABLES at its first ':' in place when it reads it, so for
// that one this may be only the first tunable.
std::optional<std::string> environment_of(pid_t pid, const std::string& name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
    std::string entry;
    while (std::getline(in, entry, '\0'))
        if (entry.starts_with(name + "=")) return entry.substr(name.size() + 1);
    return std::nullopt;
}

// Sets (or, with nullopt, unsets) a variable of this test process for one scope: the gateway
// child inherits it.
struct scoped_env {
    std::string name;
    std::optional<std::string> old;
    scoped_env(std::string n, std::optional<std::string> value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) old = v;
        if (value) setenv(name.c_str(), value->c_str(), 1);
        else unsetenv(name.c_str());
    }
    ~scoped_env() {
        if (old) setenv(name.c_str(), old->c_str(), 1);
        else unsetenv(name.c_str());
    }
};

}  // namespace

// A batch answer frees its callers' blocks in one burst; the gateway runs with a glibc malloc
// cache sized for that (gateway/main.cpp), which only the environment it starts with can set.
// An operator's own GLIBC_TUNABLES is kept, and wins where it sets the cache itself.
TEST(Process, RunsWithALargerMallocCacheUnlessTheOperatorSetsOne) {
    mock_upstream up;
    const auto path = write_file("malloc.yaml", config_text(up.port(), "1ms"));
    struct variant {
        std::optional<std::string> tunables, tuning;
        std::optional<std::string> expected;
    };
    const std::vector<variant> variants{
        {std::nullopt, std::nullopt, "glibc.malloc.tcache_count=256"},
        {"glibc.malloc.trim_threshold=262144", std::nullopt,
         "glibc.malloc.tcache_count=256:glibc.malloc.trim_threshold=262144"},
        {"glibc.malloc.tcache_count=16", std::nullopt, "glibc.malloc.tcache_count=16"},
        {std::nullopt, "0", std::nullopt},
    };
    for (const auto& v : variants) {
        scoped_env tunables("GLIBC_TUNABLES", v.tunables);
        scoped_env tuning("BATCHGATE_MALLOC_TUNING", v.tuning);
        gateway_process gw(path);
        ASSERT_NE(gw.port(), 0) << v.tunables.value_or("(unset)");
        // What the gateway runs with, as its own getenv sees it.
        const auto started = gw.started();
        EXPECT_EQ(started.contains("glibc_tunables") ? std::optional(started["glibc_tunables"].get<std::string>())
                                                     : std::nullopt,
                  v.expected)
            << started.dump();
        // And what it was started with: the gateway ran itself again with it (all of it, or up
        // to its first ':').
        const auto seen = environment_of(gw.pid(), "GLIBC_TUNABLES");
        ASSERT_EQ(seen.has_value(), v.expected.has_value());
        if (seen) EXPECT_TRUE(*seen == *v.expected || v.expected->starts_with(*seen + ":")) << *seen;
        // Under the name it was started as (run again through /proc/self/exe, the kernel calls
        // it "exe").
        std::string comm;
        std::getline(std::ifstream("/proc/" + std::to_string(gw.pid()) + "/comm"), comm);
        EXPECT_EQ(comm, std::filesystem::path(BATCHGATE_BIN).filename().string().substr(0, 15));
        EXPECT_EQ(get(gw.port(), "/users/3").status, 200);
    }
}
