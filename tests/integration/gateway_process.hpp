// The real batchgate binary as a child process (BATCHGATE_BIN), its stderr log read line by
// line: for tests of the process itself, and of what it costs (RSS).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace batchgate::testing {

// A gateway process; its stderr log is read line by line.
class gateway_process {
public:
    // capture_stdout: the access log goes to a pipe (as under a container runtime), read with
    // next_access_line(); otherwise to /dev/null.
    explicit gateway_process(const std::string& config_path, bool capture_stdout = false) {
        int err_pipe[2];
        int out_pipe[2] = {-1, -1};
        EXPECT_EQ(pipe(err_pipe), 0);
        if (capture_stdout) EXPECT_EQ(pipe(out_pipe), 0);
        pid_ = fork();
        if (pid_ == 0) {
            dup2(err_pipe[1], 2);
            int devnull = open("/dev/null", O_WRONLY);
            dup2(capture_stdout ? out_pipe[1] : devnull, 1);  // access log
            close(err_pipe[0]);
            if (capture_stdout) close(out_pipe[0]);
            execl(BATCHGATE_BIN, BATCHGATE_BIN, "--config", config_path.c_str(), nullptr);
            _exit(127);
        }
        close(err_pipe[1]);
        err_fd_ = err_pipe[0];
        if (capture_stdout) {
            close(out_pipe[1]);
            out_fd_ = out_pipe[0];
        }
        started_ = wait_for("batchgate started");
        auto j = nlohmann::json::parse(started_, nullptr, false);
        std::string listen = j.value("listen", "");
        std::string admin = j.value("admin", "");
        if (!listen.empty()) port_ = static_cast<unsigned short>(std::stoi(listen.substr(listen.rfind(':') + 1)));
        if (!admin.empty()) admin_port_ = static_cast<unsigned short>(std::stoi(admin.substr(admin.rfind(':') + 1)));
    }
    ~gateway_process() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        if (err_fd_ >= 0) close(err_fd_);
        if (out_fd_ >= 0) close(out_fd_);
    }
    // The next access-log line, or "" when none arrives within the timeout.
    std::string next_access_line(int timeout_ms) {
        std::string line;
        return next_line(out_fd_, out_, deadline(timeout_ms), line) == line_end::line ? line : std::string();
    }
    // The next stderr line containing text; "" when the process closes stderr first, or when no
    // such line comes within timeout_ms (a failure: a stuck gateway shows as the line it never
    // wrote, not as a ctest timeout).
    std::string wait_for(const std::string& text, int timeout_ms = 60000) {
        const auto end = deadline(timeout_ms);
        std::string line;
        for (;;) {
            switch (next_line(err_fd_, err_, end, line)) {
                case line_end::line:
                    lines_.push_back(line + "\n");
                    if (line.find(text) != std::string::npos) return lines_.back();
                    break;
                case line_end::timeout:
                    ADD_FAILURE() << "the gateway wrote no line with \"" << text << "\" to stderr within " << timeout_ms
                                  << " ms";
                    return {};
                case line_end::closed: return {};
            }
        }
    }
    void signal(int sig) { kill(pid_, sig); }
    // The exit code (-1 when killed by a signal); a process still running after timeout_ms is
    // a failure, and is killed.
    int wait_exit(int timeout_ms = 60000) {
        int status = 0;
        const auto end = deadline(timeout_ms);
        while (waitpid(pid_, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() >= end) {
                ADD_FAILURE() << "the gateway did not exit within " << timeout_ms << " ms";
                kill(pid_, SIGKILL);
                waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    unsigned short port() const { return port_; }
    pid_t pid() const { return pid_; }
    unsigned short admin_port() const { return admin_port_; }
    // The "batchgate started" log line (JSON).
    nlohmann::json started() const { return nlohmann::json::parse(started_, nullptr, false); }

private:
    enum class line_end { line, timeout, closed };
    static std::chrono::steady_clock::time_point deadline(int timeout_ms) {
        return std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    }
    // The next whole line of fd into line (without its '\n'), pending holding what was read
    // past it; timeout when none is whole by end, closed when fd ends first.
    static line_end next_line(int fd, std::string& pending, std::chrono::steady_clock::time_point end, std::string& line) {
        for (;;) {
            if (auto nl = pending.find('\n'); nl != std::string::npos) {
                line = pending.substr(0, nl);
                pending.erase(0, nl + 1);
                return line_end::line;
            }
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
            if (left <= 0) return line_end::timeout;
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
            char buf[4096];
            const auto n = read(fd, buf, sizeof buf);
            if (n <= 0) return line_end::closed;
            pending.append(buf, static_cast<std::size_t>(n));
        }
    }

    pid_t pid_ = -1;
    std::string started_;
    int err_fd_ = -1;
    std::string err_;  // stderr read but not yet split into lines
    int out_fd_ = -1;
    std::string out_;
    unsigned short port_ = 0;
    unsigned short admin_port_ = 0;
    std::vector<std::string> lines_;
};

}  // namespace batchgate::testing
