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
        for (;;) {
            if (auto nl = out_.find('\n'); nl != std::string::npos) {
                std::string line = out_.substr(0, nl);
                out_.erase(0, nl + 1);
                return line;
            }
            pollfd p{out_fd_, POLLIN, 0};
            if (poll(&p, 1, timeout_ms) <= 0) return {};
            char buf[4096];
            const auto n = read(out_fd_, buf, sizeof buf);
            if (n <= 0) return {};
            out_.append(buf, static_cast<std::size_t>(n));
        }
    }
    // The next stderr line containing text; "" when the process closes stderr first, or when no
    // such line comes within timeout_ms (a failure: a stuck gateway shows as the line it never
    // wrote, not as a ctest timeout).
    std::string wait_for(const std::string& text, int timeout_ms = 60000) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            for (auto nl = err_.find('\n'); nl != std::string::npos; nl = err_.find('\n')) {
                lines_.push_back(err_.substr(0, nl + 1));
                err_.erase(0, nl + 1);
                if (lines_.back().find(text) != std::string::npos) return lines_.back();
            }
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
            if (left <= 0) {
                ADD_FAILURE() << "the gateway wrote no line with \"" << text << "\" to stderr within " << timeout_ms << " ms";
                return {};
            }
            pollfd p{err_fd_, POLLIN, 0};
            if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
            char buf[4096];
            const auto n = read(err_fd_, buf, sizeof buf);
            if (n <= 0) return {};
            err_.append(buf, static_cast<std::size_t>(n));
        }
    }
    void signal(int sig) { kill(pid_, sig); }
    // The exit code (-1 when killed by a signal); a process still running after timeout_ms is
    // a failure, and is killed.
    int wait_exit(int timeout_ms = 60000) {
        int status = 0;
        const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
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
