// An IP network (address/prefix, CIDR), as trusted_proxies names them: the clients whose
// X-Forwarded-Proto the gateway believes.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace batchgate::config {

struct ip_network {
    int family = 0;                       // AF_INET or AF_INET6
    std::array<unsigned char, 16> bytes{};  // the address, host bits cleared (4 used for AF_INET)
    unsigned prefix = 0;                  // bits that must match
    std::string text;                     // as written

    // "10.0.0.0/8", "2001:db8::/32", or one address ("127.0.0.1": /32, "::1": /128); nullopt
    // when it is none of those (a bad address, a prefix past the family's length).
    static std::optional<ip_network> parse(std::string_view text);
    // Whether an address as text (a connection's peer: "10.1.2.3", "::1", or an IPv4 address
    // mapped into IPv6, "::ffff:10.1.2.3", which counts as the IPv4 one) is in the network.
    bool contains(std::string_view address) const;
};

}  // namespace batchgate::config
