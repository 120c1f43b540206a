#include "config/ip_network.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace batchgate::config {

namespace {

struct address {
    int family = 0;
    std::array<unsigned char, 16> bytes{};
};

// An address; `was_mapped` tells whether it was an IPv4 one written mapped into IPv6.
std::optional<address> read_address(std::string_view text, bool* was_mapped = nullptr) {
    if (text.empty() || text.size() > 45) return std::nullopt;  // INET6_ADDRSTRLEN - 1
    char buf[46];
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    address a;
    if (inet_pton(AF_INET, buf, a.bytes.data()) == 1) {
        a.family = AF_INET;
        return a;
    }
    if (inet_pton(AF_INET6, buf, a.bytes.data()) != 1) return std::nullopt;
    static constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(a.bytes.data(), mapped, 12) == 0) {  // ::ffff:a.b.c.d is a.b.c.d
        std::memmove(a.bytes.data(), a.bytes.data() + 12, 4);
        std::memset(a.bytes.data() + 4, 0, 12);
        a.family = AF_INET;
        if (was_mapped) *was_mapped = true;
        return a;
    }
    a.family = AF_INET6;
    return a;
}

bool prefix_matches(const std::array<unsigned char, 16>& a, const std::array<unsigned char, 16>& b, unsigned prefix) {
    const unsigned whole = prefix / 8, rest = prefix % 8;
    if (std::memcmp(a.data(), b.data(), whole) != 0) return false;
    if (rest == 0) return true;
    const auto mask = static_cast<unsigned char>(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

std::optional<ip_network> ip_network::parse(std::string_view text) {
    const auto slash = text.find('/');
    bool mapped = false;
    const auto a = read_address(text.substr(0, slash), &mapped);
    if (!a) return std::nullopt;
    // A mapped IPv4 network ("::ffff:10.0.0.0/104") is the IPv4 one: its prefix counts the 96
    // bits of the mapping, and one shorter than them reaches past IPv4 (refused).
    const unsigned written_max = a->family == AF_INET6 || mapped ? 128 : 32;
    unsigned prefix = written_max;
    if (slash != std::string_view::npos) {
        const auto digits = text.substr(slash + 1);
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
        if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || prefix > written_max)
            return std::nullopt;
    }
    if (mapped) {
        if (prefix < 96) return std::nullopt;
        prefix -= 96;
    }
    ip_network n;
    n.family = a->family;
    n.prefix = prefix;
    n.text = std::string(text);
    for (unsigned i = 0; i < 16; ++i) {  // host bits cleared: "10.1.2.3/8" is 10.0.0.0/8
        const unsigned bit = i * 8;
        n.bytes[i] = bit >= prefix ? 0
                     : bit + 8 <= prefix ? a->bytes[i]
                                         : static_cast<unsigned char>(a->bytes[i] & (0xff << (8 - (prefix - bit))));
    }
    return n;
}

bool ip_network::contains(std::string_view text) const {
    const auto a = read_address(text);
    return a && a->family == family && prefix_matches(a->bytes, bytes, prefix);
}

}  // namespace batchgate::config
