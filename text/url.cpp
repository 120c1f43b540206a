#include "text/url.hpp"

#include <algorithm>
#include <stdexcept>

namespace batchgate::routes {

namespace {

// "/a/b/" -> {"a", "b", ""}; the leading '/' is not a segment, a trailing one is.
std::vector<std::string_view> split_segments(std::string_view path) {
    std::vector<std::string_view> out;
    path.remove_prefix(1);
    for (;;) {
        auto slash = path.find('/');
        if (slash == std::string_view::npos) {
            out.push_back(path);
            return out;
        }
        out.push_back(path.substr(0, slash));
        path.remove_prefix(slash + 1);
    }
}

int hex_value(char c) {  // -1 when c is not a hex digit
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

}  // namespace

path_template::path_template(std::string_view text) {
    const std::string shown(text);
    if (text.empty() || text.front() != '/')
        throw std::invalid_argument("path template \"" + shown + "\" must start with '/'");
    for (auto seg : split_segments(text)) {
        const bool has_brace = seg.find_first_of("{}") != std::string_view::npos;
        if (!has_brace) {
            segments_.push_back({std::string(seg), false});
            continue;
        }
        // A parameter is a whole segment: "{id}"; "user{id}" or "{a}{b}" would be ambiguous.
        if (seg.size() < 2 || seg.front() != '{' || seg.back() != '}')
            throw std::invalid_argument("path template \"" + shown +
                                        "\": a parameter must be a whole segment like {id}");
        auto name = seg.substr(1, seg.size() - 2);
        if (name.empty())
            throw std::invalid_argument("path template \"" + shown + "\": empty parameter name {}");
        if (!std::all_of(name.begin(), name.end(), is_name_char))
            throw std::invalid_argument("path template \"" + shown + "\": bad parameter name \"" +
                                        std::string(name) + "\"");
        if (std::find(names_.begin(), names_.end(), name) != names_.end())
            throw std::invalid_argument("path template \"" + shown + "\": duplicate parameter {" +
                                        std::string(name) + "}");
        names_.emplace_back(name);
        segments_.push_back({std::string(name), true});
    }
}

namespace {

// Calls f(index, segment) for each segment of a path ("/a/b": "a", "b"; "/": one empty
// segment), without allocating; stops and returns false as soon as f does.
template <class F>
bool each_segment(std::string_view path, F&& f) {
    path.remove_prefix(1);
    for (std::size_t i = 0;; ++i) {
        const auto slash = path.find('/');
        if (!f(i, path.substr(0, slash))) return false;
        if (slash == std::string_view::npos) return true;
        path.remove_prefix(slash + 1);
    }
}

}  // namespace

bool path_template::match(std::string_view path, param_list& params) const {
    if (path.empty() || path.front() != '/') return false;
    // Checked first without allocating: most routes a request is tried against do not match.
    std::size_t count = 0;
    const bool fits = each_segment(path, [&](std::size_t i, std::string_view seg) {
        count = i + 1;
        if (i >= segments_.size()) return false;
        const auto& s = segments_[i];
        return s.is_param ? !seg.empty() : seg == s.text;
    });
    if (!fits || count != segments_.size()) return false;
    param_list found;
    found.reserve(names_.size());
    each_segment(path, [&](std::size_t i, std::string_view seg) {
        if (segments_[i].is_param) found.emplace_back(segments_[i].text, url_decode(seg, false));
        return true;
    });
    params = std::move(found);
    return true;
}

bool is_hex_digit(char c) { return hex_value(c) >= 0; }

bool is_unreserved(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

bool is_sub_delim(char c) { return std::string_view("!$&'()*+,;=").find(c) != std::string_view::npos; }

std::string url_decode(std::string_view text, bool plus_is_space) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '%' && i + 2 < text.size()) {
            int hi = hex_value(text[i + 1]);
            int lo = hex_value(text[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out.push_back(static_cast<char>(hi * 16 + lo));
                i += 2;
                continue;
            }
        }
        if (c == '+' && plus_is_space) c = ' ';
        out.push_back(c);
    }
    return out;
}

std::size_t url_encoded_size(std::string_view text) {
    std::size_t n = text.size();
    for (char c : text)
        if (!is_unreserved(c)) n += 2;
    return n;
}

void append_url_encoded(std::string& out, std::string_view text) {
    static constexpr char hex[] = "0123456789ABCDEF";
    const std::size_t at = out.size();
    out.resize(at + url_encoded_size(text));
    char* p = out.data() + at;
    for (char c : text) {
        if (is_unreserved(c)) {
            *p++ = c;
        } else {
            const auto u = static_cast<unsigned char>(c);
            *p++ = '%';
            *p++ = hex[u >> 4];
            *p++ = hex[u & 0x0F];
        }
    }
}

std::string url_encode(std::string_view text) {
    std::string out;
    append_url_encoded(out, text);
    return out;
}

bool has_dot_segment(std::string_view path) {
    std::string decoded(path);
    for (int round = 0; round < 3; ++round) {
        std::string next = url_decode(decoded, false);
        if (next == decoded) break;
        decoded = std::move(next);
    }
    std::size_t start = 0;
    while (start <= decoded.size()) {
        auto end = decoded.find_first_of("/\\", start);
        auto seg = std::string_view(decoded).substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (seg == ".." || seg == ".") return true;
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return false;
}

param_list parse_query(std::string_view query) {
    param_list out;
    while (!query.empty()) {
        auto amp = query.find('&');
        auto piece = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (piece.empty()) continue;
        auto eq = piece.find('=');
        if (eq == std::string_view::npos)
            out.emplace_back(url_decode(piece, true), std::string{});
        else
            out.emplace_back(url_decode(piece.substr(0, eq), true),
                             url_decode(piece.substr(eq + 1), true));
    }
    return out;
}

std::pair<std::string_view, std::string_view> split_target(std::string_view target) {
    auto q = target.find('?');
    if (q == std::string_view::npos) return {target, {}};
    return {target.substr(0, q), target.substr(q + 1)};
}

}  // namespace batchgate::routes
