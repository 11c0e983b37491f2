#!/usr/bin/perl
# Cache::Memcached::Fast against one server: set, get, gets/cas, delete.
# Usage: client_fast.pl HOST:PORT PREFIX; prints "ok" or dies saying what failed.
use strict;
use warnings;
use Cache::Memcached::Fast;

my ($server, $prefix) = @ARGV;
my $mc = Cache::Memcached::Fast->new({ servers => [$server], connect_timeout => 5, io_timeout => 5 });
my $key = "$prefix:perl";
$mc->set($key, "v1") or die "set failed\n";
my $got = $mc->get($key);
defined $got && $got eq "v1" or die "get returned " . ($got // "undef") . "\n";
my $gets = $mc->gets($key) or die "gets failed\n";
$mc->cas($key, $gets->[0], "v2") or die "cas with the current unique failed\n";
!$mc->cas($key, $gets->[0], "v3") or die "cas with a stale unique succeeded\n";
$mc->get($key) eq "v2" or die "value after cas is not v2\n";
$mc->set("$prefix:perl:kept", "kept") or die "set kept failed\n";
$mc->delete($key) or die "delete failed\n";
!defined $mc->get($key) or die "key still there after delete\n";
print "ok\n";
