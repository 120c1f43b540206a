// The section loaders the top level (loader.cpp) calls, one file each: upstreams
// (load_upstreams.cpp), a route's coalesce section (load_coalesce.cpp), fan_out and
// batch_envelope (load_fan_out.cpp), listen_tls (listen_tls.cpp). Internal to the config loader.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "config/load_context.hpp"

namespace batchgate::config::detail {

// What the coalesce checks need to know about one match entry.
struct match_shape {
    bool prefix = false;                // uses match.prefix: no parameters
    bool known = true;                  // false when its path itself was bad (or missing)
    std::vector<std::string> params;    // parameters of its path template
    std::vector<std::string> methods;   // upper case; empty = any
};

// ... and about the route's match entries together.
struct route_shape {
    std::vector<match_shape> entries;
    bool params_known = true;  // false when any match entry was bad: skip follow-on errors

    // Every entry lists only GET/HEAD (an entry without method counts as not GET).
    bool read_only() const {
        if (entries.empty()) return false;
        for (const auto& e : entries) {
            if (e.methods.empty()) return false;
            for (const auto& m : e.methods)
                if (m != "GET" && m != "HEAD") return false;
        }
        return true;
    }
    // Methods the route can receive, or nullopt when some entry takes any method.
    std::optional<std::vector<std::string>> methods() const {
        std::vector<std::string> out;
        for (const auto& e : entries) {
            if (e.methods.empty()) return std::nullopt;
            for (const auto& m : e.methods)
                if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
        }
        return out;
    }
    bool in_every_entry(const std::string& param) const {
        for (const auto& e : entries)
            if (std::find(e.params.begin(), e.params.end(), param) == e.params.end()) return false;
        return true;
    }
};

void load_upstreams(context& ctx, const field& f, gateway_config& cfg);
void load_coalesce(context& ctx, const field& f, coalesce_settings& out, const route_shape& shape);
void load_fan_out(context& ctx, const field& f, fan_out_settings& out);
void load_batch_envelope(context& ctx, const field& f, batch_envelope_settings& out);
// Also loads the certificate files (config/listen_tls.hpp), so a bad pair is an error with its line.
void load_listen_tls(context& ctx, const field& f, listen_tls_settings& out);

}  // namespace batchgate::config::detail
