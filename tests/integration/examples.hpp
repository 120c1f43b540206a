// Helpers for integration tests that run the shipped examples (examples/*.yaml) against the mock
// upstream: the example as text on ephemeral ports, JSON calls, and the calls the mock received.
#pragma once

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/harness.hpp"

namespace batchgate::testing {

inline const std::map<std::string, std::string> json_headers{{"Content-Type", "application/json"}};

// One call with a JSON body.
inline response call(unsigned short port, const std::string& method, const std::string& target,
                     const nlohmann::json& body) {
    return send_request(port, method, target, body.dump(), json_headers);
}

inline std::string read_example(const std::string& name) {
    std::ifstream in(std::string(BATCHGATE_EXAMPLES) + "/" + name);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// Replaces `from` by `to`; the text must contain `from` (so a changed example fails loudly).
inline void replace_once(std::string& text, const std::string& from, const std::string& to,
                         const std::string& what = "the example") {
    auto pos = text.find(from);
    if (pos == std::string::npos) throw std::runtime_error(what + " no longer contains \"" + from + "\"");
    text.replace(pos, from.size(), to);
}

// The shipped example, listening on ephemeral ports in front of the mock, with the window given
// (longer than the example's, so that callers released together share one batch) and the flush
// policy given: "window" by default, so that they do (the examples ship flush: adaptive, which
// sends a lone caller at once; tests of that pass "adaptive").
inline std::string example_config_text(const std::string& file, unsigned short upstream_port,
                                       const std::string& wait = "100ms", const std::string& flush = "window") {
    std::string text = read_example(file);
    replace_once(text, "listen: 0.0.0.0:8080", "listen: 127.0.0.1:0", file);
    replace_once(text, "admin_listen: 0.0.0.0:9090", "admin_listen: 127.0.0.1:0\nworker_threads: 4", file);
    replace_once(text, "url: http://127.0.0.1:9000", "url: http://127.0.0.1:" + std::to_string(upstream_port), file);
    replace_once(text, "max_wait: 5ms", "max_wait: " + wait, file);
    for (auto pos = text.find("flush: adaptive"); pos != std::string::npos; pos = text.find("flush: adaptive", pos + 1))
        text.replace(pos, 15, "flush: " + flush);
    return text;
}

inline std::shared_ptr<const config::gateway_config> example_config(const std::string& file, unsigned short upstream_port,
                                                                    const std::string& wait = "100ms",
                                                                    const std::string& flush = "window") {
    return load_yaml(example_config_text(file, upstream_port, wait, flush));
}

// The calls the mock received with this method and a path matching path_regex, in order.
inline std::vector<mock::recorded_call> calls_to(const mock::mock_upstream& up, const std::string& method,
                                                 const std::string& path_regex) {
    std::vector<mock::recorded_call> out;
    const std::regex re(path_regex);
    for (auto& c : up.calls())
        if (c.method == method && std::regex_match(c.path, re)) out.push_back(c);
    return out;
}

// Polls every 5 ms until pred() holds; false if it still does not after `limit`.
template <class Pred>
bool eventually(std::chrono::milliseconds limit, Pred pred) {
    for (auto waited = std::chrono::milliseconds(0); waited < limit; waited += std::chrono::milliseconds(5)) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pred();
}

}  // namespace batchgate::testing
