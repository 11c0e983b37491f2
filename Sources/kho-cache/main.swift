import KHOCacheServer
import ArgumentParser
print("stub")
